"""Export a trained model's retrieval feature to ONNX, and check it against PyTorch on real images.

Rebuilds `model/NAME` at `--which_epoch` from its opts.yaml, writes an ONNX model (default
`model/NAME/net_EPOCH.onnx`) that turns a batch of images (any batch size, the model's input size)
into features, and compares it with PyTorch on the first `--check_images` query and gallery images of
`--check_dir` (default: the prepared dataset the model was trained on): the largest difference of
the features (at most 1e-4) and the top-10 gallery ranking of every query (identical). An export
that fails the check is deleted. By default the graph holds the whole of test.py's feature: the
ImageNet normalisation of the input (so it takes RGB values in [0, 1]), the flip sum and the L2
normalisation; `--no-imagenet`, `--no-flip`, `--no-l2` leave each to the application.

    python export.py --name ft_ResNet50 --which_epoch last
    python test.py --name ft_ResNet50 --backend onnxruntime        # extract with the exported model

Needs the optional packages onnx, onnxscript and onnxruntime (`pip install onnx onnxscript onnxruntime`).
"""

import argparse
import time
from pathlib import Path

from data import list_images
from deploy import export_checked
from features import add_trained_model_args, provenance
from model import checkpoint_path, load_opts, load_trained_model
from utils import HelpFormatter, UserError, positive_int, run_main, setup_logging


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_trained_model_args(parser)
    parser.add_argument("--output", help="ONNX file to write (default: model/NAME/net_EPOCH.onnx)")
    for step, what in (
        ("imagenet", "ImageNet normalisation of the input"),
        ("flip", "flip sum"),
        ("l2", "L2 normalisation"),
    ):
        parser.add_argument(
            f"--{step}", action=argparse.BooleanOptionalAction, default=True, help=f"the {what} in the graph"
        )
    parser.add_argument(
        "--check_dir",
        help="a prepared dataset (query/ and gallery/) for the parity check (default: the training data)",
    )
    parser.add_argument(
        "--check_images",
        type=positive_int,
        default=64,
        help="query images of the check (and 4x as many gallery)",
    )
    return parser.parse_args(argv)


def check_images(check_dir: Path, n_query: int) -> tuple[list[Path], int]:
    """The first n_query query images and 4 x n_query gallery images of a prepared dataset."""
    for split in ("query", "gallery"):
        if not (check_dir / split).is_dir():
            raise UserError(f"{check_dir / split}: no such folder; pass --check_dir with a prepared dataset")
    query = list_images(check_dir / "query", recursive=True)[:n_query]
    gallery = list_images(check_dir / "gallery", recursive=True)[: 4 * n_query]
    if not query or not gallery:
        raise UserError(
            f"{check_dir}: no query or gallery images for the parity check; pass another --check_dir"
        )
    return query + gallery, len(query)


def main(argv=None) -> None:
    args = parse_args(argv)
    logger = setup_logging()
    run_dir = Path("model") / args.name
    model, config = load_trained_model(run_dir, args.which_epoch)
    checkpoint = checkpoint_path(run_dir, args.which_epoch)
    output = Path(args.output or checkpoint.with_suffix(".onnx"))
    check_dir = Path(args.check_dir or load_opts(run_dir / "opts.yaml").get("data_dir", ""))
    images, n_query = check_images(check_dir, args.check_images)

    start = time.perf_counter()
    prov = provenance(run_dir, args.which_epoch, checkpoint, "")
    parity = export_checked(model, config, output, prov, images, n_query, args.imagenet, args.flip, args.l2)
    seconds = time.perf_counter() - start
    logger.info(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MB; export and check {seconds:.1f} s)")
    logger.info(
        f"parity with PyTorch on {n_query} query and {len(images) - n_query} gallery images of {check_dir}: "
        f"{parity['summary']}"
    )


if __name__ == "__main__":
    run_main(main)
