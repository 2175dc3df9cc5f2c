"""Look at what a trained model does: rankings, a match threshold, and activation heatmaps.

Four modes; each writes PNG files and prints their paths.

- Ranking of a query of the features file (the default mode): reads the features file written by
  test.py (`--result_file`, with the image paths it stores) and draws the query and its `--top_k`
  nearest gallery images. Frames: green = same person (from another camera), red = different person,
  grey = junk (label -1, or same person and same camera: the Market-1501 protocol ignores both).
- Search with any image (`--query_image`, an image or a folder of images): extracts its feature with
  the trained model `model/NAME`, ranks the gallery of the features file and draws the same figure
  with neutral blue frames (the query's identity is unknown), one PNG per image.
- Threshold (`--plot_distances`): for each query of the features file, its best distance to the
  gallery with its identity present and with its identity removed (an absent person), as search
  answers with the best distance; the `--threshold` for a 1% false-match rate, a table of other
  rates, and a figure (gallery.py explains the statistic; calibrate.py stores it with an index).
- Heatmap (`--heatmap`, an image or a folder): the activation of the model's last convolutional
  stage (mean over channels), upsampled to the image and laid over it; one PNG per image, the image
  and its heatmap side by side.

Distance: the Euclidean distance between the unit-length features, |q - g| = sqrt(2 - 2 cos(q, g)),
from 0 (same direction) to 2; smaller = more similar. It ranks the gallery exactly as evaluate.py
does. With `--threshold D` a ranking answers "no match" when even the best distance is above D.
For your own images against a large gallery, index.py and search.py do the same with a gallery index,
JSON and CSV answers and an HTML page.

    python demo.py --query_index 777 --result_file pytorch_result.mat --output demo.png
    python demo.py --plot_distances --output distances.png
    python demo.py --query_image photo.jpg --name ft_ResNet50 --threshold 1.0
    python demo.py --heatmap ../Market/pytorch/query/0001 --name ft_ResNet50 --output heatmap.png

torch is imported only by the modes that run a model (--query_image and --heatmap).
"""

import argparse
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from data import image_list, load_image
from features import (
    add_result_file_arg,
    add_trained_model_args,
    check_same_model,
    load_features,
    load_for_extraction,
)
from gallery import (
    FALSE_MATCH_RATE,
    add_answer_args,
    describe_calibration,
    is_match,
    roc_table,
)
from metrics import euclidean, feature_distance_chunks
from pages import (
    DISTANCE_NAME,
    FRAME_COLOURS,
    FRAME_LEGEND,
    UNKNOWN_LEGEND,
    calibration_report,
    draw_ranking,
    match_kinds,
)
from utils import (
    HelpFormatter,
    UserError,
    add_device_args,
    atomic_write,
    run_main,
    setup_logging,
)

TILE_SIZE = (1.3, 4.0)  # inches per image of the ranking figure (width, height)
DPI = 100
HEATMAP_ALPHA = 0.5  # weight of the colour map laid over the image
BATCH_SIZE = 32  # images per forward pass of the model modes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    mode = parser.add_argument_group("mode (one of)").add_mutually_exclusive_group()
    mode.add_argument(
        "--query_index", type=int, default=0, help="draw the ranking of this query of the features file"
    )
    mode.add_argument(
        "--query_image", metavar="PATH", help="search the gallery with this image, or each image of a folder"
    )
    mode.add_argument(
        "--plot_distances",
        action="store_true",
        help="the best distances of present and absent people; prints the --threshold for a 1%% "
        "false-match rate",
    )
    mode.add_argument(
        "--heatmap", metavar="PATH", help="activation heatmap of this image, or of each image of a folder"
    )
    add_result_file_arg(parser)
    add_answer_args(parser, "--plot_distances suggests one")
    parser.add_argument(
        "--output",
        help="PNG to write; default demo.png, distances.png with --plot_distances, heatmap.png with "
        "--heatmap. For a folder of images: OUTPUT-NAME_IMAGE-NAME.png, one per image",
    )
    add_trained_model_args(parser)  # for --query_image and --heatmap
    add_device_args(parser)
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = (
            "distances.png" if args.plot_distances else "heatmap.png" if args.heatmap else "demo.png"
        )
    return args


# ----------------------------------------------------------------------------------------------------
# Ranking.


def rank_gallery(q_f: np.ndarray, g_f: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The gallery indices (k,) of the top_k nearest images of q_f (d,), nearest first, and their
    Euclidean distances: the ranking of metrics.py (ties in gallery order)."""
    dist = next(feature_distance_chunks(q_f[None], g_f))[0]
    order = np.argsort(dist, kind="stable")[:top_k]
    return order, euclidean(dist[order])


def threshold_answer(best_dist: float, threshold: float | None) -> str:
    """The one-line answer of a ranking to --threshold ("" without a threshold): gallery.is_match."""
    if threshold is None:
        return ""
    if not is_match(best_dist, threshold):
        return f"no match: the best distance {best_dist:.3f} is above the threshold {threshold:g}"
    return f"match: the best distance {best_dist:.3f} is within the threshold {threshold:g}"


def stored_path(feats: dict, split: str, index: int, result_file: str) -> str:
    """The path of image `index` of `split` ("query" or "gallery") that test.py stored in the features file."""
    if f"{split}_path" not in feats:
        raise UserError(
            f"{result_file} has no {split}_path (image paths); write it with this toolkit's test.py"
        )
    path = feats[f"{split}_path"][index]
    if not Path(path).is_file():
        raise UserError(
            f"{path}: no such image; {result_file} stores the paths test.py read, relative to the "
            "folder it ran in: run demo.py from there"
        )
    return path


def figure_size(top_k: int) -> tuple[float, float]:
    """The size in inches of the ranking figure of `top_k` images: wide enough for the header lines."""
    return max(9.0, TILE_SIZE[0] * (top_k + 1.3)), TILE_SIZE[1]


def ranking_figure(
    query_image,
    query_text: str,
    images: list,
    dists: np.ndarray,
    kinds: list[str],
    texts: list[str],
    title: str,
    answer: str = "",
) -> Figure:
    """The query and its ranked gallery images in one row, each ranked image framed by its kind.

    images: PIL images, nearest first; dists, kinds, texts: their distances, kinds (FRAME_COLOURS keys)
    and a line of text under each (e.g. id and camera). `answer` is the --threshold answer, if any.
    """
    top_k = len(images)
    fig = Figure(figsize=figure_size(top_k), dpi=DPI)
    width, height = fig.get_size_inches()
    margin = 0.1 / width  # 0.1 inch
    # The query, a gap, the ranked images.
    grid = fig.add_gridspec(
        1, top_k + 2, width_ratios=[1, 0.3] + [1] * top_k, left=margin, right=1 - margin, top=0.7, bottom=0.13
    )
    legend = (
        f"frames: {FRAME_LEGEND}" if any(kind != "unknown" for kind in kinds) else f"frames: {UNKNOWN_LEGEND}"
    )
    lines = [
        (title, 11, "bold", "black"),
        (f"{DISTANCE_NAME}, smaller = more similar", 9, "normal", "black"),
        (legend, 9, "normal", "black"),
    ]
    if answer:
        colour = FRAME_COLOURS["wrong"] if answer.startswith("no match") else FRAME_COLOURS["match"]
        lines.append((answer, 10, "bold", colour))
    for row, (text, size, weight, colour) in enumerate(lines):
        top = 1 - (0.08 + 0.19 * row) / height  # 0.19 inch per line
        fig.text(margin, top, text, fontsize=size, weight=weight, color=colour, va="top")
    draw_ranking(fig, grid, 0, query_image, query_text, images, dists, kinds, texts)
    return fig


def save_figure(fig: Figure, path: str | Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def save_image(image: Image.Image, path: str | Path) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="png"))


def show_query(args, logger) -> None:
    """--query_index: the ranking of one query of the features file."""
    feats = load_features(args.result_file)
    n_q, n_g = len(feats["query_f"]), len(feats["gallery_f"])
    i = args.query_index
    if not 0 <= i < n_q:
        raise UserError(
            f"--query_index {i} is out of range: {args.result_file} has {n_q} queries (0..{n_q - 1})"
        )
    top_k = min(args.top_k, n_g)
    order, dists = rank_gallery(feats["query_f"][i], feats["gallery_f"], top_k)
    q_pid, q_cam = int(feats["query_label"][i]), int(feats["query_cam"][i])
    g_pid, g_cam = feats["gallery_label"][order], feats["gallery_cam"][order]
    kinds = match_kinds(q_pid, q_cam, g_pid, g_cam).tolist()
    answer = threshold_answer(dists[0], args.threshold)
    fig = ranking_figure(
        load_image(stored_path(feats, "query", i, args.result_file)),
        f"id {q_pid} cam {q_cam}",
        [load_image(stored_path(feats, "gallery", j, args.result_file)) for j in order],
        dists,
        kinds,
        [f"id {p} cam {c}" for p, c in zip(g_pid, g_cam)],
        f"query {i} of {args.result_file}: top {top_k} of {n_g} gallery images",
        answer,
    )
    save_figure(fig, args.output)
    counts = ", ".join(f"{kinds.count(kind)} {kind}" for kind in ("match", "wrong", "junk"))
    logger.info(f"query {i} (id {q_pid}, cam {q_cam}): top {top_k} = {counts}")
    if answer:
        logger.info(answer)
    logger.info(f"wrote {args.output}")


# ----------------------------------------------------------------------------------------------------
# The threshold.


def plot_distances(args, logger) -> None:
    """--plot_distances: the threshold for a FALSE_MATCH_RATE false-match rate, a table, a figure."""
    feats = load_features(args.result_file)
    best, calibration = calibration_report(feats, args.result_file, FALSE_MATCH_RATE, args.output)
    logger.info(roc_table(best))
    logger.info(f"suggested --threshold {calibration['threshold']:.4f}: {describe_calibration(calibration)}")
    logger.info(f"wrote {args.output}")


# ----------------------------------------------------------------------------------------------------
# The modes that run a model.


def output_paths(output: str, images: list[Path]) -> list[Path]:
    """`output` for one image; OUTPUT-NAME_IMAGE-NAME.png next to `output` for several."""
    output = Path(output)
    if len(images) == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{image.stem}{output.suffix}") for image in images]


def model_outputs(args, logger, paths: list[Path], compute=None) -> np.ndarray:
    """`compute(model, images)` (default: the retrieval features) of the images, with model/NAME."""
    return load_for_extraction(args, logger).extract(paths, BATCH_SIZE, args.progress, compute=compute)


def search_images(args, logger) -> None:
    """--query_image: rank the gallery of the features file for each image, with the trained model."""
    from model import checkpoint_path

    feats = load_features(args.result_file)
    run_dir = Path("model") / args.name
    checkpoint = checkpoint_path(run_dir, args.which_epoch)
    warning = check_same_model(feats, checkpoint, f"{run_dir} epoch {args.which_epoch}", args.result_file)
    if warning:
        logger.warning(warning)
    paths = image_list(args.query_image, "--query_image")
    q_f = model_outputs(args, logger, paths)
    g_f = feats["gallery_f"]
    if q_f.shape[1] != g_f.shape[1]:
        raise UserError(
            f"model/{args.name} makes {q_f.shape[1]}-d features but the gallery of {args.result_file} "
            f"has {g_f.shape[1]}-d ones ({feats.get('model') or 'another model'}): use the model that "
            "wrote the features file"
        )
    top_k = min(args.top_k, len(g_f))
    for path, feature, output in zip(paths, q_f, output_paths(args.output, paths)):
        order, dists = rank_gallery(feature, g_f, top_k)
        g_pid, g_cam = feats["gallery_label"][order], feats["gallery_cam"][order]
        answer = threshold_answer(dists[0], args.threshold)
        fig = ranking_figure(
            load_image(str(path)),
            path.name,
            [load_image(stored_path(feats, "gallery", j, args.result_file)) for j in order],
            dists,
            ["unknown"] * top_k,
            [f"id {p} cam {c}" for p, c in zip(g_pid, g_cam)],
            f"{path.name} vs the gallery of {args.result_file}: top {top_k} of {len(g_f)}",
            answer,
        )
        save_figure(fig, output)
        best = feats["gallery_path"][order[0]]
        logger.info(f"{path}: {answer or f'best distance {dists[0]:.3f}'}; nearest {best} -> wrote {output}")


def activation_map(model, images):
    """(B, 3, H, W) -> (B, h, w): the mean over channels of the last convolutional feature map."""
    import torch

    return model.feature_map(images.contiguous(memory_format=torch.channels_last)).float().mean(dim=1)


def heatmap_overlay(image, activation: np.ndarray):
    """`image` (PIL) with `activation` (h, w) upsampled bilinearly, scaled to [0, 1] and laid over it
    as the jet colour map; a PIL image of the same size."""
    import torch

    width, height = image.size
    heat = torch.nn.functional.interpolate(
        torch.as_tensor(activation)[None, None], size=(height, width), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    heat = heat - heat.min()
    heat = heat / heat.max() if heat.max() > 0 else heat
    colours = matplotlib.colormaps["jet"](heat)[..., :3] * 255
    blend = (1 - HEATMAP_ALPHA) * np.asarray(image, dtype=np.float64) + HEATMAP_ALPHA * colours
    return Image.fromarray(np.round(blend).astype(np.uint8))


def draw_heatmaps(args, logger) -> None:
    """--heatmap: the activation of the last convolutional stage over each image."""
    paths = image_list(args.heatmap, "--heatmap")
    activations = model_outputs(args, logger, paths, activation_map)
    for path, activation, output in zip(paths, activations, output_paths(args.output, paths)):
        image = load_image(str(path))
        side_by_side = Image.new("RGB", (2 * image.width, image.height))
        side_by_side.paste(image, (0, 0))
        side_by_side.paste(heatmap_overlay(image, activation), (image.width, 0))
        save_image(side_by_side, output)
        logger.info(f"{path}: heatmap of the last conv stage -> wrote {output}")


def main(argv=None) -> None:
    args = parse_args(argv)
    logger = setup_logging()
    if args.heatmap:
        draw_heatmaps(args, logger)
    elif args.query_image:
        search_images(args, logger)
    elif args.plot_distances:
        plot_distances(args, logger)
    else:
        show_query(args, logger)


if __name__ == "__main__":
    run_main(main)
