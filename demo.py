"""Look at what a trained model does: rankings, a match threshold, and activation heatmaps.

Four modes; each writes PNG files and prints their paths.

- Ranking of a query of the features file (the default mode): reads the features file written by
  test.py (`--result_file`, with the image paths it stores) and draws the query and its `--top_k`
  nearest gallery images. Frames: green = same person (from another camera), red = different person,
  grey = junk (label -1, or same person and same camera: the Market-1501 protocol ignores both).
- Search with any image (`--query_image`, an image or a folder of images): extracts its feature with
  the trained model `model/NAME`, ranks the gallery of the features file and draws the same figure
  with neutral blue frames (the query's identity is unknown), one PNG per image.
- Distance distributions (`--plot_distances`): histograms of the distances of the true and false
  query-gallery pairs of the features file, and a suggested `--threshold`.
- Heatmap (`--heatmap`, an image or a folder): the activation of the model's last convolutional
  stage (mean over channels), upsampled to the image and laid over it, one PNG per image.

Distance: the Euclidean distance between the unit-length features, |q - g| = sqrt(2 - 2 cos(q, g)),
from 0 (same direction) to 2; smaller = more similar. It ranks the gallery exactly as evaluate.py
does. With `--threshold D` a ranking answers "no match" when even the best distance is above D.

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

from data import list_images, load_image
from features import add_result_file_arg, add_trained_model_args, check_same_model, load_features
from metrics import euclidean, feature_distance_chunks, protocol_masks
from utils import (
    HelpFormatter,
    UserError,
    add_device_args,
    atomic_write,
    num_workers,
    run_main,
    run_precision,
    select_device,
    setup_logging,
)

# Frame colours of the ranked images; `unknown`: the query's identity is unknown (--query_image).
FRAME_COLOURS = {"match": "#00a000", "wrong": "#e00000", "junk": "#909090", "unknown": "#3070c0"}
TILE_SIZE = (1.3, 4.0)  # inches per image of the ranking figure (width, height)
DPI = 100
HEATMAP_ALPHA = 0.5  # weight of the colour map laid over the image
DISTANCE_BINS = 400  # histogram bins over [0, 2]: the threshold is found to 0.005 (drawn 4 bins to 1)
FALSE_PAIR_RATE = 0.01  # the second threshold --plot_distances prints
BATCH_SIZE = 32  # images per forward pass of the model modes
DISTANCE_NAME = "distance |q - g| of unit features = sqrt(2 - 2 cos)"


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
        help="histogram of the true- and false-pair distances; prints a suggested --threshold",
    )
    mode.add_argument(
        "--heatmap", metavar="PATH", help="activation heatmap of this image, or of each image of a folder"
    )
    add_result_file_arg(parser)
    parser.add_argument("--top_k", type=int, default=10, help="ranked gallery images to draw")
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="D",
        help="rankings answer 'no match' when the best distance is above D (see --plot_distances)",
    )
    parser.add_argument(
        "--output",
        help="PNG to write; default demo.png, distances.png with --plot_distances, heatmap.png with "
        "--heatmap. For a folder of images: OUTPUT-NAME_IMAGE-NAME.png, one per image",
    )
    add_trained_model_args(parser)  # for --query_image and --heatmap
    add_device_args(parser)
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top_k {args.top_k}: give at least 1")
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


def match_kinds(q_pid: int, q_cam: int, g_pid: np.ndarray, g_cam: np.ndarray) -> np.ndarray:
    """What each gallery image (n,) is for one query, by metrics.protocol_masks (Market-1501):
    "junk" (ignored by the metric), "match" (a true match) or "wrong" (distractors included)."""
    good, junk = protocol_masks([q_pid], [q_cam], np.asarray(g_pid), np.asarray(g_cam))
    return np.where(junk[0], "junk", np.where(good[0], "match", "wrong"))


def threshold_answer(best_dist: float, threshold: float | None) -> str:
    """The one-line answer of a ranking to --threshold ("" without a threshold)."""
    if threshold is None:
        return ""
    if best_dist > threshold:
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
        "frames: green = same person (another camera), red = different person, grey = junk (ignored)"
        if any(kind != "unknown" for kind in kinds)
        else "frames: blue = gallery image (the query's identity is unknown)"
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

    def tile(column, image, frame_colour, head, foot, head_colour="black"):
        ax = fig.add_subplot(grid[0, column])
        ax.imshow(np.asarray(image))
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(frame_colour)
            spine.set_linewidth(4)
        ax.set_title(head, fontsize=10, color=head_colour, weight="bold")
        ax.set_xlabel(foot, fontsize=9)

    if len(query_text) > 18:  # a long file name: keep its ends
        query_text = f"{query_text[:8]}…{query_text[-9:]}"
    tile(0, query_image, "black", "query", query_text)
    for rank, (image, dist, kind, text) in enumerate(zip(images, dists, kinds, texts), start=1):
        head = f"{rank}" if kind == "unknown" else f"{rank} {kind}"
        tile(rank + 1, image, FRAME_COLOURS[kind], head, f"{dist:.3f}\n{text}", FRAME_COLOURS[kind])
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
# Distance distributions and a threshold.


def pair_histograms(feats: dict, bins: int = DISTANCE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Histograms (bins,) over [0, 2] of the distances of the true and the false query-gallery pairs.

    True pair: same id, another camera; false pair: another id (distractors included). Junk pairs
    (gallery label -1, or same id and camera) are left out, as the Market-1501 protocol does.
    Computed by chunks of queries, so memory stays bounded.
    """
    g_pid, g_cam = feats["gallery_label"], feats["gallery_cam"]
    true_hist = np.zeros(bins, dtype=np.int64)
    false_hist = np.zeros(bins, dtype=np.int64)
    start = 0
    for neg_cos in feature_distance_chunks(feats["query_f"], feats["gallery_f"]):
        stop = start + len(neg_cos)
        good, junk = protocol_masks(
            feats["query_label"][start:stop], feats["query_cam"][start:stop], g_pid, g_cam
        )
        start = stop
        bin_index = np.minimum((euclidean(neg_cos) * (bins / 2)).astype(np.int64), bins - 1)
        true_hist += np.bincount(bin_index[good], minlength=bins)
        false_hist += np.bincount(bin_index[~good & ~junk], minlength=bins)
    return true_hist, false_hist


def suggest_thresholds(true_hist: np.ndarray, false_hist: np.ndarray) -> dict:
    """Thresholds from the pair histograms; a pair is accepted as a match when its distance <= threshold.

    Returns `balanced` (the threshold that maximises the balanced accuracy, the mean of the rate of
    true pairs accepted and the rate of false pairs rejected; the middle of the best ones when several
    tie) and `false_rate` (the largest threshold that accepts at most FALSE_PAIR_RATE of the false
    pairs, None if none does), each as (threshold, true-pair rate accepted, false-pair rate accepted).
    """
    edges = np.linspace(0, 2, len(true_hist) + 1)[1:]  # accept bins 0..j <=> threshold edges[j]
    true_rate = np.cumsum(true_hist) / true_hist.sum()
    false_rate = np.cumsum(false_hist) / false_hist.sum()
    balanced_accuracy = (true_rate + 1 - false_rate) / 2
    best = np.flatnonzero(balanced_accuracy >= balanced_accuracy.max() - 1e-12)
    j = best[len(best) // 2]
    out = {"balanced": (edges[j], true_rate[j], false_rate[j]), "false_rate": None}
    low = np.flatnonzero(false_rate <= FALSE_PAIR_RATE)
    if len(low):
        j = low[-1]
        out["false_rate"] = (edges[j], true_rate[j], false_rate[j])
    return out


def distances_figure(true_hist, false_hist, threshold: float, title: str) -> Figure:
    """Both histograms as densities, 4 bins merged into one for smoother curves, zoomed on the data."""
    true_hist, false_hist = (h.reshape(-1, 4).sum(axis=1) for h in (true_hist, false_hist))
    edges = np.linspace(0, 2, len(true_hist) + 1)
    width = edges[1] - edges[0]
    fig = Figure(figsize=(8, 4.5), dpi=DPI)
    ax = fig.add_subplot()
    for hist, colour, label in (
        (true_hist, FRAME_COLOURS["match"], "true pairs (same id, another camera)"),
        (false_hist, FRAME_COLOURS["wrong"], "false pairs (another id)"),
    ):
        # Each as a density: false pairs outnumber true pairs by orders of magnitude.
        density = hist / (hist.sum() * width)
        ax.stairs(density, edges, fill=True, alpha=0.45, color=colour, label=f"{label}: {hist.sum():,}")
    ax.axvline(
        threshold,
        color="black",
        linestyle="--",
        label=f"suggested threshold {threshold:.3f} (best balanced accuracy)",
    )
    used = np.flatnonzero(true_hist + false_hist)
    ax.set_xlim(max(0, edges[used[0]] - 0.1), min(2, edges[used[-1] + 1] + 0.1))
    ax.set_xlabel(DISTANCE_NAME)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def plot_distances(args, logger) -> None:
    """--plot_distances: the pair-distance histograms and a suggested threshold."""
    feats = load_features(args.result_file)
    true_hist, false_hist = pair_histograms(feats)
    if true_hist.sum() == 0 or false_hist.sum() == 0:
        raise UserError(
            f"{args.result_file}: no {'true' if true_hist.sum() == 0 else 'false'} query-gallery pairs; "
            "a threshold needs both"
        )
    found = suggest_thresholds(true_hist, false_hist)
    threshold, true_rate, false_rate = found["balanced"]
    fig = distances_figure(true_hist, false_hist, threshold, f"query-gallery pairs of {args.result_file}")
    save_figure(fig, args.output)
    logger.info(
        f"suggested --threshold {threshold:.3f}: it maximises the balanced accuracy; it accepts "
        f"{true_rate:.1%} of the true pairs and {false_rate:.1%} of the false pairs"
    )
    if found["false_rate"] is None:
        logger.info(f"no threshold accepts at most {FALSE_PAIR_RATE:.0%} of the false pairs")
    else:
        threshold, true_rate, false_rate = found["false_rate"]
        logger.info(
            f"--threshold {threshold:.3f} accepts at most {FALSE_PAIR_RATE:.0%} of the false pairs "
            f"({false_rate:.2%}) and {true_rate:.1%} of the true pairs"
        )
    logger.info(f"wrote {args.output}")


# ----------------------------------------------------------------------------------------------------
# The modes that run a model.


def image_paths(path: str) -> list[Path]:
    """An image, or the images of a folder and its subfolders, sorted."""
    path = Path(path)
    if path.is_dir():
        images = list_images(path, recursive=True)
        if not images:
            raise UserError(f"{path}: no images in this folder")
        return images
    if not path.is_file():
        raise UserError(f"{path}: no such image or folder")
    return [path]


def output_paths(output: str, images: list[Path]) -> list[Path]:
    """`output` for one image; OUTPUT-NAME_IMAGE-NAME.png next to `output` for several."""
    output = Path(output)
    if len(images) == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{image.stem}{output.suffix}") for image in images]


def model_outputs(args, logger, paths: list[Path], compute=None) -> np.ndarray:
    """`compute(model, images)` (default: the retrieval features) of the images, with model/NAME."""
    import torch

    from features import extract
    from model import load_trained_model

    model, config = load_trained_model(Path("model") / args.name, args.which_epoch)
    device = select_device(args.gpu_ids, logger)
    amp_dtype = run_precision(args, device, logger)
    model = model.to(device, memory_format=torch.channels_last)
    return extract(
        model, paths, (config.height, config.width), device, amp_dtype, BATCH_SIZE,
        num_workers(args, device), progress=args.progress, compute=compute,
    )  # fmt: skip


def search_images(args, logger) -> None:
    """--query_image: rank the gallery of the features file for each image, with the trained model."""
    from model import checkpoint_path

    feats = load_features(args.result_file)
    run_dir = Path("model") / args.name
    checkpoint = checkpoint_path(run_dir, args.which_epoch)
    warning = check_same_model(feats, checkpoint, f"{run_dir} epoch {args.which_epoch}", args.result_file)
    if warning:
        logger.warning(warning)
    paths = image_paths(args.query_image)
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
    paths = image_paths(args.heatmap)
    activations = model_outputs(args, logger, paths, activation_map)
    for path, activation, output in zip(paths, activations, output_paths(args.output, paths)):
        overlay = heatmap_overlay(load_image(str(path)), activation)
        save_image(overlay, output)
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
