"""demo.py: ranking figures, frame colours, image search with a threshold, distance plots, heatmaps."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from PIL import Image

import demo
from data import load_image
from data import test_transform as reid_transform
from features import embed_batch, provenance, save_features
from model import ModelConfig, build_model
from utils import UserError, save_yaml

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--gpu_ids", "-1"]
# Image colours far from every frame colour, so counting frame-coloured pixels counts frames.
COLOURS = [(230, 230, 0), (150, 0, 150), (0, 200, 220), (255, 150, 60), (250, 250, 250), (40, 40, 120)]


def write_image(path: Path, index: int, size=(16, 32)) -> str:
    """A (width, height) = size image: top half one colour, bottom half another, picked by index."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[: size[1] // 2] = COLOURS[index % len(COLOURS)]
    pixels[size[1] // 2 :] = COLOURS[(index + 2) % len(COLOURS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return str(path)


def unit_row(dim: int, cos: float, axis: int) -> np.ndarray:
    """A unit vector whose cosine with e_0 is `cos`, the rest along e_axis."""
    row = np.zeros(dim, dtype=np.float32)
    row[0], row[axis] = cos, np.sqrt(1 - cos**2)
    return row


# Hand-made gallery for query 0 (id 1, camera 1, feature e_0): (id, camera, cosine with e_0), nearest first.
GALLERY = [(1, 2, 0.99), (2, 1, 0.95), (1, 1, 0.9), (-1, 3, 0.8), (0, 2, 0.7), (2, 2, 0.0)]
KINDS_OF_QUERY_0 = ["match", "wrong", "junk", "junk", "wrong", "wrong"]


@pytest.fixture
def hand_features(tmp_path):
    """8-d features file: query 0 as in GALLERY; query 1 (id 2, camera 1) is exactly gallery image 5."""
    dim = 8
    g_f = np.stack([unit_row(dim, cos, axis) for axis, (_, _, cos) in enumerate(GALLERY, start=1)])
    g_f[5] = np.eye(dim, dtype=np.float32)[7]
    feats = {
        "query_f": np.stack([np.eye(dim, dtype=np.float32)[0], np.eye(dim, dtype=np.float32)[7]]),
        "query_label": np.array([1, 2]),
        "query_cam": np.array([1, 1]),
        "gallery_f": g_f,
        "gallery_label": np.array([pid for pid, _, _ in GALLERY]),
        "gallery_cam": np.array([cam for _, cam, _ in GALLERY]),
        "query_path": [write_image(tmp_path / "img" / f"q{i}.png", i) for i in range(2)],
        "gallery_path": [write_image(tmp_path / "img" / f"g{i}.png", i + 2) for i in range(len(GALLERY))],
    }
    save_features(tmp_path / "hand.mat", feats)
    return tmp_path / "hand.mat"


def colour_mask(png: Path, colour: str, rows=(0.0, 1.0), tolerance: int = 30) -> np.ndarray:
    """Which pixels of the PNG's band of `rows` (fractions of its height) are `colour`, give or take."""
    with Image.open(png) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.int64)
    pixels = pixels[round(rows[0] * len(pixels)) : round(rows[1] * len(pixels))]
    target = np.round(np.array(to_rgb(colour)) * 255)
    return np.all(np.abs(pixels - target) <= tolerance, axis=2)


def frame_sides(png: Path, colour: str) -> int:
    """The vertical frame sides of `colour` that cross a band through the middle of the images: runs of
    columns that are `colour` all along the band (the band holds no text)."""
    full = colour_mask(png, colour, rows=(0.4, 0.5)).all(axis=0)
    return int(np.sum(full[1:] & ~full[:-1]) + full[0])


def test_match_kinds_follow_the_market_protocol():
    g_pid = np.array([pid for pid, _, _ in GALLERY])
    g_cam = np.array([cam for _, cam, _ in GALLERY])
    assert demo.match_kinds(1, 1, g_pid, g_cam).tolist() == KINDS_OF_QUERY_0
    # Query of id 0 (a real person in MSMT17): other-camera images of id 0 are matches, as in metrics.py.
    assert demo.match_kinds(0, 1, g_pid, g_cam).tolist()[4] == "match"


def test_rank_gallery_orders_by_distance():
    g_f = np.stack([unit_row(4, cos, 1) for cos in (0.2, 0.9, -1.0, 0.5)])
    order, dist = demo.rank_gallery(np.eye(4, dtype=np.float32)[0], g_f, 3)
    assert order.tolist() == [1, 3, 0]
    assert dist == pytest.approx(np.sqrt(2 - 2 * np.array([0.9, 0.5, 0.2])), abs=1e-6)


def test_query_index_figure_size_colours_and_counts(hand_features, tmp_path, capsys):
    out = tmp_path / "rank.png"
    demo.main(["--query_index", "0", "--result_file", str(hand_features), "--output", str(out)])
    printed = capsys.readouterr().out
    # --top_k 10 is cut to the 6 gallery images.
    assert "top 6 = 1 match, 3 wrong, 2 junk" in printed and f"wrote {out}" in printed
    with Image.open(out) as img:
        assert img.size == (round(demo.figure_size(6)[0] * demo.DPI), round(demo.TILE_SIZE[1] * demo.DPI))
    # Two sides per frame: one green frame, three red ones, two grey ones, no blue one.
    sides = {kind: frame_sides(out, colour) for kind, colour in demo.FRAME_COLOURS.items()}
    assert sides == {"match": 2, "wrong": 6, "junk": 4, "unknown": 0}


def test_ranking_figure_frames_each_tile_by_its_kind():
    images = [Image.new("RGB", (16, 32), COLOURS[i]) for i in range(4)]
    kinds = ["match", "wrong", "junk", "unknown"]
    fig = demo.ranking_figure(images[0], "q", images, np.array([0.1, 0.2, 0.3, 0.4]), kinds, [""] * 4, "t")
    for ax, kind in zip(fig.axes[1:], kinds):
        assert ax.spines["left"].get_edgecolor()[:3] == pytest.approx(to_rgb(demo.FRAME_COLOURS[kind]))
    assert [ax.get_xlabel().split("\n")[0] for ax in fig.axes[1:]] == ["0.100", "0.200", "0.300", "0.400"]
    assert fig.axes[3].get_title() == "3 junk"


def test_out_of_range_index_is_one_line_error(hand_features, tmp_path):
    with pytest.raises(UserError, match=r"--query_index 2 is out of range: .* has 2 queries \(0\.\.1\)"):
        demo.main(["--query_index", "2", "--result_file", str(hand_features)])
    run = subprocess.run(
        [sys.executable, str(ROOT / "demo.py"), "--query_index", "-1", "--result_file", str(hand_features)],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"error: --query_index -1 is out of range: {hand_features} has 2 queries (0..1)"
    ]


def test_drawing_a_ranking_does_not_import_torch(hand_features, tmp_path):
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import demo; "
        f"demo.main(['--result_file', {str(hand_features)!r}, '--threshold', '0.5']); "
        "print('torch' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[-1] == "False"
    assert "match: the best distance 0.141 is within the threshold 0.5" in lines
    assert (tmp_path / "demo.png").is_file()


def test_missing_image_paths_are_a_user_error(hand_features, tmp_path):
    (tmp_path / "img" / "g0.png").unlink()
    with pytest.raises(UserError, match="g0.png: no such image"):
        demo.main(["--result_file", str(hand_features), "--output", str(tmp_path / "x.png")])


def test_plot_distances_calibrates_on_the_best_distance(hand_features, tmp_path, capsys):
    out = tmp_path / "dist.png"
    demo.main(["--plot_distances", "--result_file", str(hand_features), "--output", str(out)])
    printed = capsys.readouterr().out
    # Query 0: nearest true match g0 at sqrt(2 - 2 * 0.99) = 0.1414, nearest other person g1 at
    # sqrt(2 - 2 * 0.95) = 0.3162 (g2 and g3 are junk). Query 1: its true match at 0, every other person
    # at sqrt(2). With 2 queries a 1% rate gives k = 0: the threshold is just below 0.3162.
    threshold = float(re.search(r"suggested --threshold (\d\.\d+): threshold", printed)[1])
    assert threshold == pytest.approx(0.3162, abs=1e-4)
    assert "0.0% of the 2 queries answered 'match' when their own identity is removed" in printed
    assert "100.0% of the 2 with a true match answered with a true match first" in printed
    assert "too few to measure a rate of 1.0%" in printed
    assert printed.splitlines()[0].split() == [
        "target",
        "threshold",
        "false",
        "match",
        "true",
        "match",
        "answered",
    ]
    with Image.open(out) as img:
        assert img.size == (11 * demo.DPI, round(4.5 * demo.DPI))


# ----------------------------------------------------------------------------------------------------
# The modes that run a model.


def make_model(name: str, **overrides) -> torch.nn.Module:
    """An untrained model folder model/NAME (in the current folder), as train.py would leave it."""
    config = ModelConfig(**{"backbone": "resnet18", "nclasses": 4, "height": 64, "width": 32, **overrides})
    net = build_model(config).eval()
    save_yaml(f"model/{name}/opts.yaml", {"model": config.to_dict()})
    torch.save(net.state_dict(), f"model/{name}/net_last.pth")
    return net


@pytest.fixture
def searchable(tmp_path, monkeypatch):
    """model/tiny and two features files of its gallery: `near.mat` (the model's own features) and
    `far.mat` (every gallery feature orthogonal to the feature of gallery image 2)."""
    monkeypatch.chdir(tmp_path)
    net = make_model("tiny")
    paths = [write_image(tmp_path / "gallery" / f"{i + 1:04d}_c1s1_000001_00.png", i) for i in range(4)]
    transform = reid_transform(64, 32)
    g_f = embed_batch(net, torch.stack([transform(load_image(p)) for p in paths])).numpy()
    feats = {
        "query_f": g_f[:1],
        "query_label": np.array([1]),
        "query_cam": np.array([2]),
        "gallery_f": g_f,
        "gallery_label": np.arange(1, 5),
        "gallery_cam": np.ones(4, dtype=int),
        "gallery_path": paths,
        **provenance(Path("model/tiny"), "last", Path("model/tiny/net_last.pth"), "image + flip, scales 1"),
    }
    save_features("near.mat", feats)
    q = g_f[2]
    far = np.random.default_rng(0).standard_normal(g_f.shape).astype(np.float32)
    far -= np.outer(far @ q, q)
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    save_features("far.mat", {**feats, "gallery_f": far})
    return paths


def test_query_image_search_and_threshold(searchable, tmp_path, capsys):
    query = searchable[2]
    args = ["--query_image", query, "--name", "tiny", "--which_epoch", "last", *CPU, "--threshold", "1.0"]
    demo.main([*args, "--result_file", "near.mat", "--output", "near.png", "--top_k", "3"])
    printed = capsys.readouterr().out
    # The image itself is in the gallery: distance 0, a match.
    assert "match: the best distance 0.000 is within the threshold 1" in printed
    assert f"nearest {query} -> wrote near.png" in printed
    with Image.open("near.png") as img:
        assert img.size == (round(demo.figure_size(3)[0] * demo.DPI), round(demo.TILE_SIZE[1] * demo.DPI))
    assert frame_sides(tmp_path / "near.png", demo.FRAME_COLOURS["unknown"]) == 6  # three blue frames
    assert frame_sides(tmp_path / "near.png", demo.FRAME_COLOURS["wrong"]) == 0
    assert colour_mask(tmp_path / "near.png", demo.FRAME_COLOURS["match"]).any()  # the green answer text

    demo.main([*args, "--result_file", "far.mat", "--output", "far.png"])
    printed = capsys.readouterr().out
    # Every gallery feature is orthogonal to the query's: distance sqrt(2) for all.
    assert "no match: the best distance 1.414 is above the threshold 1" in printed
    assert Path("far.png").is_file()


def test_query_image_folder_writes_one_png_per_image(searchable, tmp_path, capsys):
    demo.main(["--query_image", "gallery", "--name", "tiny", *CPU, "--num_workers", "0", "--no-progress",
               "--result_file", "near.mat", "--output", "out/search.png"])  # fmt: skip
    printed = capsys.readouterr().out
    names = sorted(p.name for p in Path("out").iterdir())
    assert names == [f"search_{Path(p).stem}.png" for p in searchable]
    assert "best distance 0.000" in printed and "threshold" not in printed


def test_query_image_needs_features_of_the_same_model(searchable, hand_features, capsys):
    # A file that does not say which model wrote it: a warning; features of another size: refused.
    with pytest.raises(UserError, match=r"makes 512-d features but the gallery .* has 8-d ones"):
        demo.main(
            ["--query_image", searchable[0], "--name", "tiny", *CPU, "--result_file", str(hand_features)]
        )
    assert f"warning: {hand_features} does not say which model wrote it" in capsys.readouterr().out
    # Another model of the same architecture (other weights): refused before extracting anything.
    make_model("other")
    with pytest.raises(
        UserError, match=r"near.mat was written by model/tiny epoch last, not by model/other epoch last"
    ):
        demo.main(["--query_image", searchable[0], "--name", "other", *CPU, "--result_file", "near.mat"])


def test_heatmap_overlay_puts_the_hot_end_where_the_activation_is():
    image = Image.new("RGB", (20, 40), (128, 128, 128))
    activation = np.zeros((4, 2), dtype=np.float32)
    activation[0, 0] = 5.0  # top left
    overlay = np.asarray(demo.heatmap_overlay(image, activation), dtype=int)
    assert overlay.shape == (40, 20, 3)
    top_left, bottom_right = overlay[0, 0], overlay[-1, -1]
    assert top_left[0] > top_left[2] + 40  # jet's hot end: red
    assert bottom_right[2] > bottom_right[0] + 40  # jet's cold end: blue


# The torchvision networks the toolkit started with, and one of each other kind of trunk: written here
# (OSNet), channels-last Swin (torchvision), a timm ViT's tokens. Every row's feature_map is checked in
# test_model.py.
@pytest.mark.parametrize(
    "backbone",
    ["resnet50", "resnet18", "resnet34", "densenet121", "mobilenet_v2", "osnet_x0_25", "swin_t",
     "timm:vit_tiny_patch16_224"],
)  # fmt: skip
def test_activation_map_of_every_kind_of_backbone(backbone):
    net = build_model(ModelConfig(nclasses=4, backbone=backbone, height=64, width=32)).eval()
    activation = demo.activation_map(net, torch.randn(2, 3, 64, 32))
    assert activation.dim() == 3 and activation.shape[0] == 2 and activation.dtype == torch.float32


@pytest.mark.parametrize(
    "name, overrides",
    [("tiny", {}), ("pcb", {"PCB": True, "backbone": "resnet50", "height": 96, "width": 48})],
)
def test_heatmap_is_the_image_and_its_overlay(tmp_path, monkeypatch, capsys, name, overrides):
    monkeypatch.chdir(tmp_path)
    make_model(name, **overrides)
    image = write_image(tmp_path / "person.jpg", 0, size=(30, 70))
    demo.main(["--heatmap", image, "--name", name, *CPU, "--bf16"])
    assert "wrote heatmap.png" in capsys.readouterr().out
    with Image.open("heatmap.png") as img:
        assert img.size == (60, 70)  # the image, then its heatmap
        pair = np.asarray(img, dtype=int)
    with Image.open(image) as img:
        original = np.asarray(img, dtype=int)
    assert np.abs(pair[:, :30] - original).mean() < 3  # the image itself (PNG of a JPEG's pixels)
    assert np.abs(pair[:, 30:] - original).mean() > 20  # the colour map is laid over it


def test_help():
    run = subprocess.run(
        [sys.executable, str(ROOT / "demo.py"), "--help"], check=False, capture_output=True, text=True
    )
    assert run.returncode == 0
    for option in (
        "--query_index",
        "--query_image",
        "--plot_distances",
        "--heatmap",
        "--threshold",
        "--gpu_ids",
    ):
        assert option in run.stdout
