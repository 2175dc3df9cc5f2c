"""Extract the retrieval features of the query and gallery images with a trained model.

Rebuilds the model from `model/NAME/opts.yaml`, loads a checkpoint, and writes the features,
person ids and cameras of `TEST_DIR/query` and `TEST_DIR/gallery` (and `multi-query` with --multi)
to a .mat file that the evaluate scripts read (default `pytorch_result.mat` in the current folder).
The features are those of features.py: image + flipped image, at each scale of --ms, L2-normalised.

    python test.py --name ft_ResNet50 --test_dir ../Market/pytorch --which_epoch last --bf16
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

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
    num_workers,
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
    parser.add_argument("--batchsize", type=int, default=64, help="images per forward pass")
    parser.add_argument("--multi", action="store_true", help="also extract multi-query features")
    parser.add_argument(
        "--ms", default="1", help="comma-separated image scales whose features are summed, e.g. 1,0.9"
    )
    add_result_file_arg(parser)
    # The architecture comes from opts.yaml; these classic flags are only checked against it.
    parser.add_argument("--PCB", action="store_true", help="check that the model is PCB (classic flag)")
    parser.add_argument(
        "--use_dense", action="store_true", help="check that it is DenseNet-121 (classic flag)"
    )
    add_trained_model_args(parser)
    add_device_args(parser)
    args = parser.parse_args(argv)
    try:
        args.scales = [float(s) for s in args.ms.split(",")]
    except ValueError:
        parser.error(f"--ms {args.ms!r}: give comma-separated numbers, e.g. 1,1.1")
    if any(s <= 0 for s in args.scales):
        parser.error(f"--ms {args.ms!r}: scales must be positive")
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
    logger = setup_logging()
    run_dir = Path("model") / args.name
    model, config = load_trained_model(run_dir, args.which_epoch)
    if (args.PCB and not config.PCB) or (args.use_dense and config.backbone != "densenet121"):
        built = "PCB" if config.PCB else config.backbone
        raise UserError(
            f"{run_dir} holds a {built} model; drop --PCB/--use_dense (opts.yaml defines the model)"
        )
    device = select_device(args.gpu_ids, logger)
    amp_dtype = run_precision(args, device, logger)
    model = model.to(device, memory_format=torch.channels_last)

    test_dir = Path(args.test_dir).resolve()  # absolute image paths in the features file, for demo.py
    naming, ids = read_naming(test_dir), read_ids(test_dir)
    splits = ["query", "gallery"] + (["mquery"] if args.multi else [])
    extraction = extraction_name(args.scales, config, amp_dtype)
    start = time.perf_counter()
    feats = provenance(run_dir, args.which_epoch, checkpoint_path(run_dir, args.which_epoch), extraction)
    n_images = 0
    for key in splits:
        paths, pids, cams = split_images(test_dir / SPLITS[key], naming, ids)
        feats[f"{key}_f"] = extract(
            model, paths, (config.height, config.width), device, amp_dtype, args.batchsize,
            num_workers(args, device), args.scales, args.progress, desc=SPLITS[key],
        )  # fmt: skip
        feats[f"{key}_label"], feats[f"{key}_cam"] = pids, cams
        if key != "mquery":  # demo.py shows query and gallery images
            feats[f"{key}_path"] = [str(p) for p in paths]
        n_images += len(paths)
    elapsed = time.perf_counter() - start
    save_features(args.result_file, feats)
    logger.info(
        f"{n_images} images in {elapsed:.1f} s ({n_images / elapsed:.1f} img/s), "
        f"{feats['query_f'].shape[1]}-d features -> {args.result_file}"
    )


if __name__ == "__main__":
    run_main(main)
