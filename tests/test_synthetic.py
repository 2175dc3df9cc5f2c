"""Tests of tools/synthetic.py: Market-1501 layout and naming, determinism, safe output folder, options."""

import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthetic
from data import parse_name
from utils import UserError, is_marked

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_ids": 12, "num_cams": 3, "images_per_cam": 2, "multi_query": 1, "junk": 5, "distractors": 4}
# Market-1501 naming: 4-digit id (or -1), camera, sequence, 6-digit frame, 2-digit box index.
MARKET_NAME = re.compile(r"^(-1|\d{4})_c\d+s\d+_\d{6}_\d{2}\.jpg$")
# Every option of the script: one per keyword of generate().
OPTIONS = ["--out", "--seed", *(f"--{key}" for key in SMALL)]


def read_folder(root: Path) -> dict:
    """{relative path: bytes} of every file under `root`."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def names(root: Path, folder: str) -> list[str]:
    return sorted(p.name for p in (root / folder).iterdir())


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "market"
    counts = synthetic.generate(out, seed=0, **SMALL)
    return out, counts


def test_layout_and_naming(small):
    out, counts = small
    assert sorted(p.name for p in out.iterdir()) == sorted([*synthetic.FOLDERS, synthetic.MARKER])
    for folder in synthetic.FOLDERS:
        files = names(out, folder)
        assert len(files) == counts[folder] > 0
        for name in files:
            assert MARKET_NAME.match(name), name
            pid, cam = parse_name(name)
            assert 1 <= cam <= SMALL["num_cams"] and -1 <= pid <= SMALL["num_ids"]
    pids = {folder: Counter(parse_name(n)[0] for n in names(out, folder)) for folder in synthetic.FOLDERS}
    assert pids["bounding_box_test"][-1] == counts["junk"] == SMALL["junk"]
    assert pids["bounding_box_test"][0] == counts["distractors"] == SMALL["distractors"]
    for folder in ("bounding_box_train", "query", "gt_bbox"):
        assert -1 not in pids[folder] and 0 not in pids[folder]


def test_identity_split_and_queries(small):
    out, counts = small
    train = {parse_name(n)[0] for n in names(out, "bounding_box_train")}
    test = {parse_name(n)[0] for n in names(out, "bounding_box_test")} - {-1, 0}
    assert not train & test
    assert train | test == set(range(1, SMALL["num_ids"] + 1))
    assert (len(train), len(test)) == (counts["train_ids"], counts["test_ids"]) == (6, 6)

    gallery_cams = defaultdict(set)
    for name in names(out, "bounding_box_test"):
        pid, cam = parse_name(name)
        gallery_cams[pid].add(cam)
    queries = [parse_name(n) for n in names(out, "query")]
    assert len(set(queries)) == len(queries), "at most one query per (id, camera)"
    assert {pid for pid, _ in queries} == test
    for pid, cam in queries:
        assert len(gallery_cams[pid]) >= 2 and gallery_cams[pid] - {cam}, "a true match in another camera"
        assert cam in gallery_cams[pid]

    # gt_bbox: each query image itself plus `multi_query` more of the same id and camera.
    gt_bbox = read_folder(out / "gt_bbox")
    for name in names(out, "query"):
        assert (out / "query" / name).read_bytes() == gt_bbox[name]
    assert Counter(parse_name(n) for n in gt_bbox) == dict.fromkeys(queries, 1 + SMALL["multi_query"])


def test_images_are_128x64_rgb_jpeg(small):
    out, _ = small
    for folder in synthetic.FOLDERS:
        for path in (out / folder).iterdir():
            with Image.open(path) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 128))


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    out, _ = small
    synthetic.generate(tmp_path / "again", seed=0, **SMALL)
    synthetic.generate(tmp_path / "other", seed=1, **SMALL)
    first = read_folder(out)
    assert read_folder(tmp_path / "again") == first
    other = read_folder(tmp_path / "other")
    shared = set(other) & set(first) - {synthetic.MARKER}
    assert set(other) != set(first) and all(other[k] != first[k] for k in shared)


def test_refuses_foreign_folder_and_replaces_own_output(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        synthetic.generate(foreign, **SMALL)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    with pytest.raises(UserError, match="not a folder"):
        synthetic.generate(foreign / "notes.txt", **SMALL)

    # An earlier synthetic output is replaced as a whole, with what was made from it (prepare.py
    # writes `pytorch/` inside it): no file of the old run is left.
    out = tmp_path / "out"
    synthetic.generate(out, seed=0, **SMALL)
    (out / "bounding_box_train" / "stale.jpg").write_bytes(b"")
    (out / "pytorch").mkdir()
    (out / "pytorch" / "dataset.yaml").write_text("stale")
    synthetic.generate(out, seed=1, **SMALL)
    synthetic.generate(tmp_path / "fresh", seed=1, **SMALL)
    assert read_folder(out) == read_folder(tmp_path / "fresh")
    assert "seed: 1" in (out / synthetic.MARKER).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "fresh", "out"], (
        "no temporary folder left"
    )


def test_writes_into_an_empty_folder_with_usual_permissions(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    synthetic.generate(out, **SMALL)
    assert is_marked(out, synthetic.MARKER, synthetic.MARKER_HEADER)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask, "not the private mode of a temporary folder"


def test_cli_error_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        synthetic.run_main(synthetic.main, ["--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize(
    "option",
    [
        ["--num_ids", "1"],
        ["--num_cams", "1"],
        ["--num_cams", "10"],
        ["--images_per_cam", "0"],
        ["--multi_query", "-1"],
        ["--junk", "-1"],
        ["--distractors", "-1"],
    ],
)
def test_bad_options_are_refused(tmp_path, option):
    with pytest.raises(UserError):
        synthetic.main(["--out", str(tmp_path / "out"), *option])
    assert not (tmp_path / "out").exists()


def test_command_line_with_every_option(tmp_path):
    out = tmp_path / "cli"
    options = "--num_ids 9 --num_cams 4 --images_per_cam 1 --multi_query 0 --junk 3 --distractors 2 --seed 7"
    argv = ["--out", str(out), *options.split()]
    result = subprocess.run(
        [sys.executable, "tools/synthetic.py", *argv], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert len(result.stdout.splitlines()) == 1 and "4 train + 5 test ids, 4 cameras" in result.stdout
    assert is_marked(out, synthetic.MARKER, synthetic.MARKER_HEADER)
    cams = {parse_name(n)[1] for folder in synthetic.FOLDERS for n in names(out, folder)}
    assert cams == {1, 2, 3, 4}
    assert names(out, "query") == names(out, "gt_bbox"), "--multi_query 0: gt_bbox holds the queries only"
    gallery = Counter(parse_name(n) for n in names(out, "bounding_box_test") if parse_name(n)[0] > 0)
    assert set(gallery.values()) == {1}, "--images_per_cam 1: one gallery image per (id, camera)"
    test_pids = [parse_name(n)[0] for n in names(out, "bounding_box_test")]
    assert (test_pids.count(-1), test_pids.count(0)) == (3, 2)
    assert "seed: 7" in (out / synthetic.MARKER).read_text()


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        synthetic.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option in text
    assert "default: data/synthetic" in text and "default: 200" in text


def pixel_rank1(root: Path) -> float:
    """Rank@1 of raw-pixel nearest neighbours, Market protocol: junk and same id + camera removed."""

    def load(folder):
        files = names(root, folder)
        pixels = np.stack([np.asarray(Image.open(root / folder / n), np.float32).ravel() for n in files])
        pid_cam = np.array([parse_name(n) for n in files])
        return pixels, pid_cam[:, 0], pid_cam[:, 1]

    q_f, q_pid, q_cam = load("query")
    g_f, g_pid, g_cam = load("bounding_box_test")
    dist = (q_f**2).sum(1)[:, None] - 2 * q_f @ g_f.T + (g_f**2).sum(1)[None, :]  # (n_query, n_gallery)
    same_id_and_camera = (q_pid[:, None] == g_pid[None, :]) & (q_cam[:, None] == g_cam[None, :])
    ignore = same_id_and_camera | (g_pid[None, :] == -1)
    dist[ignore] = np.inf
    return float((g_pid[dist.argmin(1)] == q_pid).mean())


def test_raw_pixels_are_not_enough(tmp_path):
    # Cameras move pixels (background, light, scale, pose) more than identities do, so a raw-pixel
    # nearest neighbour mostly finds another person in the query's camera. Measured here: 0.05 (0.0 to
    # 0.22 over seeds 0-5); on the default dataset 0.05, where a ResNet-18 trained from scratch for 10
    # epochs reaches 0.92.
    synthetic.generate(tmp_path / "nn", num_ids=40, multi_query=0, junk=20, distractors=20, seed=0)
    assert pixel_rank1(tmp_path / "nn") < 0.3
