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
import time
from pathlib import Path

import numpy as np

from data import image_labels, list_images, read_ids, read_naming
from deploy import (
    add_backend_args,
    check_backend_args,
    gather_shards,
    join_processes,
    leave_processes,
    load_backend,
    shard,
    world_and_rank,
)
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
    add_backend_args(parser)
    add_trained_model_args(parser)
    add_device_args(parser)
    args = parser.parse_args(argv)
    check_backend_args(parser, args)
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


def main(argv=None) -> None:
    args = parse_args(argv)
    world, rank = world_and_rank()
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
    join_processes(world, device)

    def check_images():  # what an export is checked on: the first query and gallery images
        return tuple(split_images(test_dir / split, naming, ids)[0] for split in ("query", "gallery"))

    origin = provenance(run_dir, args.which_epoch, checkpoint, "")
    model, compute, normalize, onnx_file = load_backend(
        args, model, config, checkpoint, origin, device, check_images, logger
    )

    splits = ["query", "gallery"] + (["mquery"] if args.multi else [])
    extraction = extraction_name(args.scales, config, amp_dtype, onnx_file)
    start = time.perf_counter()
    feats = provenance(run_dir, args.which_epoch, checkpoint, extraction)
    check_writable(args.result_file)  # now, not after the extraction
    n_images = 0
    for key in splits:
        paths, pids, cams = split_images(test_dir / SPLITS[key], naming, ids)
        mine = shard(len(paths), world, rank)  # this process's share, in order
        f = extract(
            model, [paths[i] for i in mine], (config.height, config.width), device, amp_dtype, args.batchsize,
            num_workers(args, device), args.scales, args.progress, desc=SPLITS[key], compute=compute,
            normalize=normalize,
        )  # fmt: skip
        feats[f"{key}_f"] = gather_shards(f, world, rank)
        feats[f"{key}_label"], feats[f"{key}_cam"] = pids, cams
        if key != "mquery":  # demo.py shows query and gallery images
            feats[f"{key}_path"] = [str(p) for p in paths]
        n_images += len(paths)
    elapsed = time.perf_counter() - start
    leave_processes()
    if rank:
        return
    save_features(args.result_file, feats)
    logger.info(
        f"{n_images} images in {elapsed:.1f} s ({n_images / elapsed:.1f} img/s"
        f"{f' with {world} processes' if world > 1 else ''}), {feats['query_f'].shape[1]}-d features -> "
        f"{args.result_file}"
    )


if __name__ == "__main__":
    run_main(main)
