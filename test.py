"""Extract the retrieval features of the query and gallery images with a trained model.

Rebuilds the model from `model/NAME/opts.yaml`, loads a checkpoint, and writes the features,
person ids and cameras of `TEST_DIR/query` and `TEST_DIR/gallery` (and `multi-query` with --multi)
to a .mat file that the evaluate scripts read (default `pytorch_result.mat` in the current folder).

    python test.py --name ft_ResNet50 --test_dir ../Market/pytorch --which_epoch last --bf16
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from tqdm import tqdm

from evaluation import add_result_file_arg, save_features
from model import extract_embedding, load_trained_model
from utils import (
    HelpFormatter,
    UserError,
    add_device_args,
    add_model_args,
    autocast,
    load_image,
    load_yaml,
    naming_pattern,
    num_workers,
    parse_name,
    run_main,
    run_precision,
    select_device,
    setup_logging,
    test_transform,
)


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
    add_model_args(parser)
    add_device_args(parser)
    args = parser.parse_args(argv)
    try:
        args.scales = [float(s) for s in args.ms.split(",")]
    except ValueError:
        parser.error(f"--ms {args.ms!r}: give comma-separated numbers, e.g. 1,1.1")
    if any(s <= 0 for s in args.scales):
        parser.error(f"--ms {args.ms!r}: scales must be positive")
    return args


def extract_split(model, folder: Path, naming, args, device, amp_dtype) -> dict:
    """Features (N, D), person ids, cameras and paths of the images of one prepared split."""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; run prepare.py, or check --test_dir")
    try:
        data = datasets.ImageFolder(
            str(folder), transform=test_transform(*args.input_size), loader=load_image
        )
    except FileNotFoundError:
        raise UserError(f"{folder}: no images in it; run prepare.py again") from None
    paths = [p for p, _ in data.samples]
    try:
        pids, cams = zip(*(parse_name(p, naming) for p in paths))
    except ValueError as err:
        raise UserError(f"{err}; prepare.py --naming must match the data") from None
    loader = DataLoader(data, batch_size=args.batchsize, num_workers=num_workers(args, device))
    features = []
    for images, _ in tqdm(loader, desc=folder.name, disable=not args.progress, leave=False):
        with autocast(device, amp_dtype):
            features.append(extract_embedding(model, images.to(device), args.scales).cpu())
    return {
        "f": torch.cat(features).numpy(),
        "label": np.array(pids, dtype=np.int64),
        "cam": np.array(cams, dtype=np.int64),
        "path": paths,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    logger = setup_logging()
    run_dir = Path("model") / args.name
    model, opts = load_trained_model(run_dir, args.which_epoch)
    if (args.PCB and not opts.get("PCB")) or (args.use_dense and opts.get("backbone") != "densenet121"):
        built = "PCB" if opts.get("PCB") else opts.get("backbone")
        raise UserError(
            f"{run_dir} holds a {built} model; drop --PCB/--use_dense (opts.yaml defines the model)"
        )
    args.input_size = (opts["height"], opts["width"])
    device = select_device(args.gpu_ids, logger)
    amp_dtype = run_precision(args, device, logger)
    model = model.to(device, memory_format=torch.channels_last)

    test_dir = Path(args.test_dir).resolve()  # absolute image paths in the features file, for demo.py
    dataset_file = test_dir / "dataset.yaml"  # written by prepare.py: how file names encode id and camera
    naming = naming_pattern(load_yaml(dataset_file)["naming"] if dataset_file.is_file() else "market")
    splits = {"query": "query", "gallery": "gallery"}
    if args.multi:
        splits["mquery"] = "multi-query"

    start, feats = time.perf_counter(), {"model": f"{run_dir} epoch {args.which_epoch}"}
    n_images = 0
    for key, folder in splits.items():
        split = extract_split(model, test_dir / folder, naming, args, device, amp_dtype)
        n_images += len(split["path"])
        for field, value in split.items():
            if not (key == "mquery" and field == "path"):  # demo.py shows query and gallery images
                feats[f"{key}_{field}"] = value
    elapsed = time.perf_counter() - start
    save_features(args.result_file, feats)
    logger.info(
        f"{n_images} images in {elapsed:.1f} s ({n_images / elapsed:.1f} img/s), "
        f"{feats['query_f'].shape[1]}-d features -> {args.result_file}"
    )


if __name__ == "__main__":
    run_main(main)
