"""Extract the retrieval features of the query and gallery images with a trained model.

Rebuilds the model from `model/NAME/opts.yaml`, loads a checkpoint, and writes the features,
person ids and cameras of `TEST_DIR/query` and `TEST_DIR/gallery` (and `multi-query` with --multi)
to a .mat file that the evaluate scripts read (default `pytorch_result.mat` in the current folder).
The features are those of features.py: image + flipped image, at each scale of --ms, L2-normalised.

What runs the model (`--backend`): on a GPU, PyTorch; on a CPU, onnxruntime, which bench/bench_cpu.py
measured 2 to 3 times faster than PyTorch there, on the ONNX model of that checkpoint that export.py
writes (`model/NAME/net_EPOCH.onnx`, or `--onnx FILE`). When that file is absent or was exported
from an older checkpoint, test.py exports it first and checks it against PyTorch on the first test
images; without the onnx packages, or with --ms, --fp16 or --bf16, PyTorch runs on the CPU too. The
features are the same to float rounding, and the features file says which ran. Under torchrun each
process extracts its share of the images (gloo on CPUs, NCCL on GPUs) and the first writes the one
features file, the same as one process writes.

    python test.py --name ft_ResNet50 --test_dir ../Market/pytorch --which_epoch last --bf16
    torchrun --nproc_per_node=2 test.py --name ft_ResNet50 --test_dir ../Market/pytorch
"""

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from data import image_labels, list_images, read_ids, read_naming
from features import (
    add_result_file_arg,
    add_trained_model_args,
    extract,
    extraction_name,
    provenance,
    save_features,
)
from model import checkpoint_path, load_trained_model
from utils import (
    HelpFormatter,
    UserError,
    add_device_args,
    check_writable,
    file_sha256,
    num_workers,
    positive_int,
    run_main,
    run_precision,
    select_device,
    setup_logging,
)

# Features file key prefix -> the prepared split it is extracted from.
SPLITS = {"query": "query", "gallery": "gallery", "mquery": "multi-query"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--test_dir", default="../Market/pytorch", help="prepared dataset (prepare.py)")
    parser.add_argument("--batchsize", type=positive_int, default=64, help="images per forward pass")
    parser.add_argument("--multi", action="store_true", help="also extract multi-query features")
    parser.add_argument(
        "--ms",
        default="1",
        help="comma-separated image scales whose features are summed, e.g. 1,0.9; as in the classic, a "
        "scale is an area: each side is resized by its square root",
    )
    add_result_file_arg(parser)
    # The architecture comes from opts.yaml; these classic flags are only checked against it.
    parser.add_argument("--PCB", action="store_true", help="check that the model is PCB (classic flag)")
    parser.add_argument(
        "--use_dense", action="store_true", help="check that it is DenseNet-121 (classic flag)"
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime"],
        default="auto",
        help="what runs the model: PyTorch, or onnxruntime on the ONNX file of export.py; auto: "
        "onnxruntime on a CPU (the faster there) when it can, else PyTorch",
    )
    parser.add_argument(
        "--onnx", help="the ONNX file for --backend onnxruntime (default: model/NAME/net_EPOCH.onnx)"
    )
    add_trained_model_args(parser)
    add_device_args(parser)
    args = parser.parse_args(argv)
    if args.backend == "onnxruntime" and (args.ms != "1" or args.fp16 or args.bf16):
        parser.error(
            "--backend onnxruntime runs the exported graph as it is: one scale, float32 (drop --ms, --fp16, --bf16)"
        )
    try:
        areas = [float(s) for s in args.ms.split(",")]
    except ValueError:
        parser.error(f"--ms {args.ms!r}: give comma-separated numbers, e.g. 1,1.1")
    if not all(a > 0 for a in areas):
        parser.error(f"--ms {args.ms!r}: scales must be positive")
    args.scales = [math.sqrt(a) for a in areas]  # the side scale of each area scale
    return args


def split_images(folder: Path, naming, ids=None) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """The images of one prepared split, sorted, with their person ids and cameras (data.image_labels:
    from their names, or their folders, through the table of ids of dataset.yaml)."""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; run prepare.py, or check --test_dir")
    paths = list_images(folder, recursive=True)
    if not paths:
        raise UserError(f"{folder}: no images in it; run prepare.py again")
    try:
        pids, cams = zip(*(image_labels(p, naming, ids) for p in paths))
    except ValueError as err:
        raise UserError(f"{err}; prepare.py --naming must match the data") from None
    return paths, np.array(pids, dtype=np.int64), np.array(cams, dtype=np.int64)


def choose_backend(args, device) -> str:
    """--backend auto: onnxruntime on a CPU when its packages are installed and the run is what an
    export computes (one scale, float32); PyTorch otherwise."""
    from deploy import available

    if args.backend != "auto":
        return args.backend
    plain = args.ms == "1" and not (args.fp16 or args.bf16)
    return "onnxruntime" if device.type == "cpu" and plain and available() else "torch"


def onnx_runner(
    args, model, config, run_dir: Path, checkpoint: Path, device, test_dir: Path, naming, ids, logger
):
    """--backend onnxruntime: the exported model of `checkpoint` (exported first when --backend auto
    finds none, or one of an older checkpoint), the compute function of features.extract, whether the
    graph leaves the ImageNet normalisation outside, and the file; None when auto's export fails."""
    from deploy import OnnxFeatures, export_checked

    path = Path(args.onnx or checkpoint.with_suffix(".onnx"))
    sha = file_sha256(checkpoint)
    exported = True
    if args.backend == "auto" and not args.onnx and int(os.environ.get("RANK", "0")) == 0:
        meta = OnnxFeatures(path).metadata if path.is_file() else {}
        if meta.get("checkpoint_sha256") != sha:  # absent, or exported from an older checkpoint
            query, _, _ = split_images(test_dir / "query", naming, ids)
            gallery, _, _ = split_images(test_dir / "gallery", naming, ids)
            prov = provenance(run_dir, args.which_epoch, checkpoint, "")
            try:
                parity = export_checked(
                    model, config, path, prov, query[:32] + gallery[:128], len(query[:32])
                )
                logger.info(f"exported {path} for onnxruntime; against PyTorch: {parity['summary']}")
            except UserError as err:  # a network the exporter cannot take: PyTorch runs it
                logger.warning(f"warning: {err}; extracting with PyTorch")
                exported = False
    if dist.is_initialized():  # the other processes wait for the first one's export, and its outcome
        outcome = [exported]
        dist.broadcast_object_list(outcome, src=0)
        exported = outcome[0]
    if not exported:
        return None
    runner = OnnxFeatures(path, device)
    meta = runner.metadata
    if meta.get("flip") != "in the graph" or meta.get("l2") != "in the graph":
        if args.backend == "auto":  # an export made for an application that does these itself
            logger.warning(
                f"warning: {path} leaves the flip sum or the L2 normalisation out; extracting with PyTorch"
            )
            return None
        raise UserError(
            f"{path} leaves the flip sum or the L2 normalisation out; export it again without --no-flip/--no-l2"
        )
    if meta.get("checkpoint_sha256") != sha:
        raise UserError(f"{path} was exported from another checkpoint than {checkpoint}; export it again")
    return runner, (lambda onnx, images: onnx(images)), meta["imagenet_normalisation"] == "outside", path


def main(argv=None) -> None:
    args = parse_args(argv)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    logger = setup_logging()
    if rank:
        logger.setLevel("ERROR")
    run_dir = Path("model") / args.name
    model, config = load_trained_model(run_dir, args.which_epoch)
    if (args.PCB and not config.PCB) or (args.use_dense and config.backbone != "densenet121"):
        built = "PCB" if config.PCB else config.backbone
        raise UserError(
            f"{run_dir} holds a {built} model; drop --PCB/--use_dense (opts.yaml defines the model)"
        )
    device = select_device(args.gpu_ids, logger)
    amp_dtype = run_precision(args, device, logger)
    checkpoint = checkpoint_path(run_dir, args.which_epoch)
    test_dir = Path(args.test_dir).resolve()  # absolute image paths in the features file, for demo.py
    naming, ids = read_naming(test_dir), read_ids(test_dir)
    if world > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    compute, normalize, onnx_file = None, True, None
    onnx = None
    if choose_backend(args, device) == "onnxruntime":
        onnx = onnx_runner(args, model, config, run_dir, checkpoint, device, test_dir, naming, ids, logger)
    if onnx is not None:
        model, compute, normalize, onnx_file = onnx
    else:
        model = model.to(device, memory_format=torch.channels_last)

    splits = ["query", "gallery"] + (["mquery"] if args.multi else [])
    extraction = extraction_name(args.scales, config, amp_dtype, onnx_file)
    start = time.perf_counter()
    feats = provenance(run_dir, args.which_epoch, checkpoint, extraction)
    check_writable(args.result_file)  # now, not after the extraction
    n_images = 0
    for key in splits:
        paths, pids, cams = split_images(test_dir / SPLITS[key], naming, ids)
        shard = np.array_split(np.arange(len(paths)), world)[rank]  # this process's share, in order
        f = extract(
            model, [paths[i] for i in shard], (config.height, config.width), device, amp_dtype, args.batchsize,
            num_workers(args, device), args.scales, args.progress, desc=SPLITS[key], compute=compute,
            normalize=normalize,
        )  # fmt: skip
        feats[f"{key}_f"] = gather_shards(f, world, rank)
        feats[f"{key}_label"], feats[f"{key}_cam"] = pids, cams
        if key != "mquery":  # demo.py shows query and gallery images
            feats[f"{key}_path"] = [str(p) for p in paths]
        n_images += len(paths)
    elapsed = time.perf_counter() - start
    if world > 1:
        dist.destroy_process_group()
    if rank:
        return
    save_features(args.result_file, feats)
    logger.info(
        f"{n_images} images in {elapsed:.1f} s ({n_images / elapsed:.1f} img/s"
        f"{f' with {world} processes' if world > 1 else ''}), {feats['query_f'].shape[1]}-d features -> "
        f"{args.result_file}"
    )


def gather_shards(f: np.ndarray, world: int, rank: int) -> np.ndarray | None:
    """The features of every process's share, in order, on the first process (None on the others)."""
    if world == 1:
        return f
    shards = [None] * world if rank == 0 else None
    dist.gather_object(f, shards, dst=0)
    return np.concatenate(shards) if rank == 0 else None


if __name__ == "__main__":
    run_main(main)
