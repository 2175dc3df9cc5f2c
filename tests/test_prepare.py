"""prepare.py: raw dataset -> ImageFolder tree, on tiny handmade raw trees (and CUHK01 when present)."""

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import prepare
import utils
from data import NAMINGS, parse_name
from utils import load_yaml, run_main

REPO = Path(__file__).resolve().parents[1]
CUHK01 = REPO.parent / "shared" / "data" / "cuhk01"
CUSTOM = r"^p(?P<pid>\d+)_cam(?P<cam>\d+)_"

# A small Market-1501 tree: 3 training ids (one with a two-digit camera), 2 test ids, the gallery's
# distractor (0000) and junk (-1), and files that are not images.
MARKET = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000301_01.jpg",
        "0002_c3s1_000551_01.jpg",
        "0007_c1s1_000151_01.jpg",
        "0007_c12s1_000201_02.jpg",  # sorts before 0007_c1s1: it is 0007's val image
        "0010_c4s1_000101_01.jpg",
        "0010_c5s1_000101_01.jpg",
        "0010_c6s1_000101_01.jpg",
        "0010_c6s2_000201_01.jpg",
    ],
    "query": ["0003_c1s1_000101_00.jpg", "0003_c2s1_000101_00.jpg", "0005_c3s1_000101_00.jpg"],
    "bounding_box_test": [
        "0003_c1s1_000200_01.jpg",
        "0003_c3s1_000101_01.jpg",
        "0003_c4s1_000101_01.jpg",
        "0005_c1s1_000101_01.jpg",
        "0005_c2s1_000101_01.jpg",
        "0000_c1s1_000000_01.jpg",
        "-1_c2s1_000000_01.jpg",
    ],
}
GT_BBOX = ["0003_c1s1_000101_00.jpg", "0003_c1s1_000102_00.jpg", "0005_c3s1_000101_00.jpg"]
NOT_IMAGES = ["Thumbs.db", "readme.txt", "._0002_c1s1_000451_03.jpg"]
EXPECTED = {
    "train": {"ids": 3, "images": 6, "cameras": 5},
    "val": {"ids": 3, "images": 3, "cameras": 3},
    "train_all": {"ids": 3, "images": 9, "cameras": 7},
    "query": {"ids": 2, "images": 3, "cameras": 3},
    "gallery": {"ids": 4, "images": 7, "cameras": 4},
}


def write_image(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (value % 256, 40, 90)).save(path)


def make_raw(root: Path, layout: dict[str, list[str]], junk_files: bool = True) -> Path:
    for i, (folder, names) in enumerate(layout.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for j, name in enumerate(names):
            write_image(root / folder / name, 16 * i + j)
        if junk_files:
            for name in NOT_IMAGES:
                (root / folder / name).write_bytes(b"not an image")
    return root


def make_market(root: Path, gt_bbox: bool = False) -> Path:
    return make_raw(root, {**MARKET, **({"gt_bbox": GT_BBOX} if gt_bbox else {})})


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def tree_counts(out: Path, naming: str = "market") -> dict[str, dict[str, int]]:
    """Counts read back from the written tree, parsing its file names again."""
    counts = {}
    for split in sorted(p.name for p in out.iterdir() if p.is_dir()):
        labels = [parse_name(f.name, naming) for f in (out / split).glob("*/*")]
        counts[split] = {
            "ids": len(list((out / split).iterdir())),
            "images": len(labels),
            "cameras": len({cam for _, cam in labels}),
        }
    return counts


def images_of(out: Path, split: str) -> set[tuple[str, str]]:
    return {(f.parent.name, f.name) for f in (out / split).glob("*/*")}


def run(raw: Path, out: Path, *args: str) -> dict:
    return prepare.main(["--data_dir", str(raw), "--output_dir", str(out), *args])


def user_error(capsys, argv: list[str]) -> str:
    """Run prepare through run_main like the command line; return its one-line error."""
    with pytest.raises(SystemExit) as exc:
        run_main(prepare.main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def snapshot(root: Path) -> dict:
    """Every path under `root` with its mode, mtime and bytes (a hard link changes only nlink and ctime)."""
    snap = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        snap[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return snap


# ----------------------------------------------------------------------------------------------------
# Market-1501 layout


def test_market_counts_and_layout(tmp_path, capsys):
    raw, out = make_market(tmp_path / "Market"), tmp_path / "out"
    marker = run(raw, out)
    assert tree_counts(out) == EXPECTED
    assert marker["splits"] == EXPECTED
    assert sorted(os.listdir(out)) == ["dataset.yaml", "gallery", "query", "train", "train_all", "val"]
    # One folder per id, named as in the file names (distractor 0000, junk -1), original names kept.
    assert sorted(os.listdir(out / "gallery")) == ["-1", "0000", "0003", "0005"]
    assert images_of(out, "query") == {(name[:4], name) for name in MARKET["query"]}
    assert images_of(out, "gallery") == {(name.split("_")[0], name) for name in MARKET["bounding_box_test"]}
    assert not any(name in NOT_IMAGES for name in listing(out))
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines()}
    assert rows["split"] == ["ids", "images", "cameras"]
    assert rows["train_all"] == ["3", "9", "7"] and rows["gallery"] == ["4", "7", "4"]
    assert "done in" in printed


def test_val_holds_the_first_image_of_each_training_id(tmp_path):
    raw, out = make_market(tmp_path / "Market"), tmp_path / "out"
    run(raw, out)
    train, val, train_all = (images_of(out, split) for split in ("train", "val", "train_all"))
    assert val == {
        ("0002", "0002_c1s1_000451_03.jpg"),
        ("0007", "0007_c12s1_000201_02.jpg"),
        ("0010", "0010_c4s1_000101_01.jpg"),
    }
    assert sorted(folder for folder, _ in val) == sorted(os.listdir(out / "train"))
    assert not train & val
    assert train | val == train_all
    assert train_all == {(name[:4], name) for name in MARKET["bounding_box_train"]}


def test_dataset_yaml_marks_the_folder_and_keeps_the_naming(tmp_path):
    raw, out = make_market(tmp_path / "Market"), tmp_path / "out"
    run(raw, out)
    marker = load_yaml(out / "dataset.yaml")
    assert marker["prepared_by"] == "prepare.py"
    assert marker["naming"] == NAMINGS["market"]
    assert marker["data_dir"] == str(raw.resolve())
    assert marker["layout"] == "market"
    assert marker["splits"] == EXPECTED
    assert marker["skipped"] == {"junk_train": 0, "bad_names": 0}
    # test.py parses query/gallery names with the saved naming.
    assert parse_name("-1_c2s1_000000_01.jpg", marker["naming"]) == (-1, 2)


def test_multi_query_from_gt_bbox(tmp_path):
    raw, out = make_market(tmp_path / "Market", gt_bbox=True), tmp_path / "out"
    marker = run(raw, out)
    assert marker["splits"]["multi-query"] == {"ids": 2, "images": 3, "cameras": 2}
    assert images_of(out, "multi-query") == {(name[:4], name) for name in GT_BBOX}
    assert tree_counts(out) == {**EXPECTED, "multi-query": {"ids": 2, "images": 3, "cameras": 2}}


def test_imagefolder_reads_the_splits(tmp_path):
    datasets = pytest.importorskip("torchvision.datasets")
    raw, out = make_market(tmp_path / "Market"), tmp_path / "out"
    run(raw, out)
    train = datasets.ImageFolder(out / "train")
    assert train.classes == ["0002", "0007", "0010"]
    assert len(train) == 6
    assert datasets.ImageFolder(out / "val").classes == train.classes
    assert train[0][0].size == (4, 8)


def test_junk_and_distractors_in_train_are_not_training_ids(tmp_path, capsys):
    raw = make_market(tmp_path / "Market")
    write_image(raw / "bounding_box_train" / "-1_c1s1_000001_01.jpg")
    write_image(raw / "bounding_box_train" / "0000_c2s1_000001_01.jpg")
    marker = run(raw, tmp_path / "out")
    assert marker["splits"] == EXPECTED
    assert marker["skipped"]["junk_train"] == 2
    assert "left 2 junk/distractor images" in capsys.readouterr().out


def test_single_image_identity_stays_in_train(tmp_path, capsys):
    raw, out = make_market(tmp_path / "Market"), tmp_path / "out"
    write_image(raw / "bounding_box_train" / "0011_c2s1_000001_01.jpg")
    marker = run(raw, out)
    assert marker["single_image_ids"] == 1
    assert ("0011", "0011_c2s1_000001_01.jpg") in images_of(out, "train")
    assert "0011" not in os.listdir(out / "val")
    assert "1 training identities have one image" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------
# Links, re-runs and the raw dataset


def test_hard_links_by_default(tmp_path):
    raw, out = make_market(tmp_path / "Market"), tmp_path / "out"
    marker = run(raw, out)
    src = raw / "bounding_box_train" / "0002_c2s1_000301_01.jpg"
    dst = out / "train" / "0002" / src.name
    assert not dst.is_symlink()
    assert dst.stat().st_ino == src.stat().st_ino
    assert src.stat().st_nlink == 3  # raw, train, train_all
    assert marker["files"] == {"hard_links": 28, "symlinks": 0, "copies": 0}


def test_copy_option_copies(tmp_path):
    raw, out = make_market(tmp_path / "Market"), tmp_path / "out"
    marker = run(raw, out, "--copy")
    src = raw / "bounding_box_train" / "0002_c2s1_000301_01.jpg"
    dst = out / "train" / "0002" / src.name
    assert not dst.is_symlink()
    assert dst.stat().st_nlink == 1 and src.stat().st_nlink == 1
    assert dst.read_bytes() == src.read_bytes()
    assert marker["files"] == {"hard_links": 0, "symlinks": 0, "copies": 28}


def test_falls_back_to_symlinks_then_copies(tmp_path, monkeypatch):
    raw = make_market(tmp_path / "Market")
    src = raw / "query" / "0003_c1s1_000101_00.jpg"

    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    marker = run(raw, tmp_path / "out1")
    dst = tmp_path / "out1" / "query" / "0003" / src.name
    assert dst.is_symlink() and Path(os.readlink(dst)) == src.resolve()
    assert marker["files"] == {"hard_links": 0, "symlinks": 28, "copies": 0}

    def not_permitted(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", not_permitted)
    marker = run(raw, tmp_path / "out2")
    dst = tmp_path / "out2" / "query" / "0003" / src.name
    assert not dst.is_symlink() and dst.stat().st_nlink == 1 and dst.read_bytes() == src.read_bytes()
    assert marker["files"] == {"hard_links": 0, "symlinks": 0, "copies": 28}


def test_rerun_gives_the_same_tree_and_leaks_nothing(tmp_path):
    raw, out = make_market(tmp_path / "Market"), tmp_path / "out"
    run(raw, out)
    first = listing(out)
    run(raw, out)
    assert listing(out) == first
    assert sorted(os.listdir(tmp_path)) == ["Market", "out"]  # no temporary or old trees left behind
    # The old tree's links are gone, not duplicated: raw + train/val + train_all.
    assert (raw / "bounding_box_train" / "0002_c1s1_000451_03.jpg").stat().st_nlink == 3

    # A raw image removed (or added) since the last run disappears from (or appears in) the output.
    (raw / "bounding_box_train" / "0010_c6s2_000201_01.jpg").unlink()
    write_image(raw / "query" / "0005_c4s1_000101_00.jpg")
    marker = run(raw, out)
    gone = {"train/0010/0010_c6s2_000201_01.jpg", "train_all/0010/0010_c6s2_000201_01.jpg"}
    new = {"query/0005/0005_c4s1_000101_00.jpg"}
    assert set(listing(out)) == set(first) - gone | new
    assert marker["splits"]["train_all"]["images"] == 8
    assert marker["splits"]["query"] == {"ids": 2, "images": 4, "cameras": 4}


def test_empty_output_folder_is_used(tmp_path):
    raw, out = make_market(tmp_path / "Market"), tmp_path / "out"
    out.mkdir()
    run(raw, out)
    assert tree_counts(out) == EXPECTED


def test_read_only_raw_dataset_is_never_modified(tmp_path):
    raw, out = make_market(tmp_path / "Market", gt_bbox=True), tmp_path / "out"
    paths = [raw, *raw.rglob("*")]
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        before = snapshot(raw)
        run(raw, out)
        run(raw, out)  # the re-run unlinks the old tree: its hard links share the raw files
        run(raw, tmp_path / "copies", "--copy")
        assert tree_counts(out) == {**EXPECTED, "multi-query": {"ids": 2, "images": 3, "cameras": 2}}
        # As root chmod doesn't stop writes, so this is the real check: nothing changed.
        assert snapshot(raw) == before
    finally:
        for p in paths:
            p.chmod(stat.S_IRWXU)


def test_default_data_dir_falls_back_to_the_archive_name(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    err = user_error(capsys, [])
    assert f"data folder not found (looked for ../Market and ../Market-1501-v15.09.15 in {work})" in err

    raw = make_market(tmp_path / "Market-1501-v15.09.15")
    marker = prepare.main([])
    assert marker["data_dir"] == str(raw.resolve())
    assert tree_counts(raw / "pytorch") == EXPECTED
    assert sorted(os.listdir(tmp_path)) == ["Market-1501-v15.09.15", "work"]  # nothing renamed

    make_raw(tmp_path / "Market", {k: v[:2] for k, v in MARKET.items()})
    assert prepare.main([])["data_dir"] == str((tmp_path / "Market").resolve())  # ../Market comes first


# ----------------------------------------------------------------------------------------------------
# Other datasets


@pytest.mark.parametrize(
    "version, train, test", [("V1", "train", "test"), ("V2", "mask_train_v2", "mask_test_v2")]
)
def test_msmt17_list_files(tmp_path, version, train, test):
    raw = tmp_path / f"MSMT17_{version}"
    lists = {
        "list_train.txt": (train, ["0000_000_01_0303morning_0015_0.jpg", "0000_001_02_0303morning_0020_0.jpg",
                                   "0001_000_15_0113noon_0853_1.jpg", "0001_001_03_0113noon_0901_1.jpg"]),
        "list_val.txt": (train, ["0000_002_05_0303noon_0001_0.jpg", "0001_002_10_0114morning_0003_2.jpg"]),
        "list_query.txt": (test, ["0000_000_04_0302morning_0001_0.jpg", "0001_000_11_0302noon_0002_0.jpg"]),
        "list_gallery.txt": (test, ["0000_001_06_0302morning_0100_0.jpg", "0000_002_04_0302noon_0007_0.jpg",
                                    "0001_001_12_0302noon_0200_0.jpg"]),
    }  # fmt: skip
    for list_name, (folder, names) in lists.items():
        lines = []
        for i, name in enumerate(names):
            write_image(raw / folder / name[:4] / name, i)
            lines.append(f"{name[:4]}/{name} {int(name[:4])}")
        (raw / list_name).write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    marker = run(raw, out)
    expected = {
        "train": {"ids": 2, "images": 4, "cameras": 4},
        "val": {"ids": 2, "images": 2, "cameras": 2},
        "train_all": {"ids": 2, "images": 6, "cameras": 6},
        "query": {"ids": 2, "images": 2, "cameras": 2},
        "gallery": {"ids": 2, "images": 3, "cameras": 3},
    }
    assert marker["layout"] == "msmt17" and marker["naming"] == NAMINGS["msmt17"]
    assert marker["splits"] == expected
    assert tree_counts(out, marker["naming"]) == expected
    assert "0000" in os.listdir(out / "train")  # 0000 is a real person in MSMT17
    assert images_of(out, "train_all") == images_of(out, "train") | images_of(out, "val")

    # A listed image that is missing, and a missing list file.
    (raw / test / "0001" / "0001_001_12_0302noon_0200_0.jpg").unlink()
    with pytest.raises(
        prepare.UserError, match=r"list_gallery.txt line 3: .*0001_001_12_0302noon_0200_0.jpg not found"
    ):
        run(raw, out)
    (raw / "list_val.txt").unlink()
    with pytest.raises(prepare.UserError, match="has MSMT17 list files but not list_val.txt"):
        run(raw, out)


def test_cuhk03_np_png(tmp_path, capsys):
    layout = {
        "bounding_box_train": ["0001_c1_1.png", "0001_c2_6.png", "0002_c1_1.png", "0002_c2_7.PNG"],
        "query": ["0100_c1_1.png", "0101_c2_6.png"],
        "bounding_box_test": ["0100_c2_6.png", "0101_c1_1.png", "0101_c1_2.png"],
    }
    for variant in ("detected", "labeled"):
        make_raw(tmp_path / "cuhk03-np" / variant, layout)
    out = tmp_path / "out"
    marker = run(tmp_path / "cuhk03-np" / "detected", out)
    assert marker["splits"] == {
        "train": {"ids": 2, "images": 2, "cameras": 1},
        "val": {"ids": 2, "images": 2, "cameras": 1},
        "train_all": {"ids": 2, "images": 4, "cameras": 2},
        "query": {"ids": 2, "images": 2, "cameras": 2},
        "gallery": {"ids": 2, "images": 3, "cameras": 2},
    }
    assert ("0002", "0002_c2_7.PNG") in images_of(out, "train")
    # The parent of the two layouts: a clear pointer to one of them.
    err = user_error(capsys, ["--data_dir", str(tmp_path / "cuhk03-np"), "--output_dir", str(out)])
    assert "has no bounding_box_train/ folder: it holds detected/, labeled/ with that layout" in err
    assert f"--data_dir {tmp_path / 'cuhk03-np' / 'detected'}" in err


@pytest.mark.parametrize(
    "naming, names, folders",
    [
        (CUSTOM, ["p12_cam3_x.jpg", "p12_cam4_y.jpg", "p7_cam3_z.jpg", "p7_cam10_w.jpg", "p1_cam1_q.jpg"],
         ["12", "7"]),
        (  # VeRi (vehicle re-ID): three-digit cameras
            r"^(?P<pid>\d+)_c(?P<cam>\d+)_",
            ["0012_c003_00030600_0.jpg", "0012_c004_00030700_0.jpg", "0007_c003_00011111_1.jpg",
             "0007_c010_00022222_0.jpg", "0001_c001_00000001_0.jpg"],
            ["0007", "0012"],
        ),
    ],
)  # fmt: skip
def test_custom_naming(tmp_path, naming, names, folders):
    raw = make_raw(
        tmp_path / "raw",
        {"bounding_box_train": names[:4], "query": names[4:], "bounding_box_test": names[4:]},
    )
    out = tmp_path / "out"
    marker = run(raw, out, "--naming", naming)
    assert marker["naming"] == naming
    assert sorted(os.listdir(out / "train_all")) == folders  # the ids as written in the file names
    assert marker["splits"]["train_all"] == {"ids": 2, "images": 4, "cameras": 3}
    assert marker["splits"]["val"]["ids"] == marker["splits"]["val"]["images"] == 2
    assert tree_counts(out, marker["naming"])["train_all"] == marker["splits"]["train_all"]


def test_custom_naming_keeps_id_zero_for_training(tmp_path):
    names = ["p0_cam1_a.jpg", "p0_cam2_b.jpg", "p1_cam1_c.jpg"]
    raw = make_raw(
        tmp_path / "raw",
        {"bounding_box_train": names[:2], "query": names[2:], "bounding_box_test": names[2:]},
    )
    marker = run(raw, tmp_path / "out", "--naming", CUSTOM)
    assert marker["splits"]["train_all"]["images"] == 2 and marker["skipped"]["junk_train"] == 0


# ----------------------------------------------------------------------------------------------------
# Bad input: one-line errors that name the problem and say what to do


def test_missing_data_folder(tmp_path, capsys):
    err = user_error(capsys, ["--data_dir", str(tmp_path / "nowhere")])
    assert f"data folder not found (looked for {tmp_path / 'nowhere'}): pass --data_dir" in err


@pytest.mark.parametrize("folder", ["bounding_box_train", "query", "bounding_box_test"])
def test_missing_split_folder(tmp_path, capsys, folder):
    raw = make_raw(tmp_path / "Market", {k: v for k, v in MARKET.items() if k != folder})
    err = user_error(capsys, ["--data_dir", str(raw), "--output_dir", str(tmp_path / "out")])
    assert f"{raw} has no {folder}/ folder: --data_dir must hold bounding_box_train/" in err


def test_empty_split(tmp_path, capsys):
    raw = make_raw(tmp_path / "Market", {**MARKET, "bounding_box_test": []})  # only non-images there
    err = user_error(capsys, ["--data_dir", str(raw), "--output_dir", str(tmp_path / "out")])
    assert f"{raw / 'bounding_box_test'} has no images (.jpg .jpeg .png" in err


def test_bad_names_stop_unless_skipped(tmp_path, capsys):
    raw = make_market(tmp_path / "Market")
    bad = ["IMG_0001.jpg", "IMG_0002.jpg", "IMG_0003.jpg", "IMG_0004.jpg", "person3.png"]
    for name in bad:
        write_image(raw / "bounding_box_test" / name)
    out = tmp_path / "out"
    err = user_error(capsys, ["--data_dir", str(raw), "--output_dir", str(out)])
    assert "5 file name(s)" in err and "do not match the naming" in err
    assert (
        "bounding_box_test/IMG_0001.jpg, bounding_box_test/IMG_0002.jpg, bounding_box_test/IMG_0003.jpg"
        in err
    )
    assert "IMG_0004" not in err
    assert "--naming" in err and "--skip_bad_names" in err
    assert not out.exists()

    marker = run(raw, out, "--skip_bad_names")
    assert marker["splits"] == EXPECTED
    assert marker["skipped"]["bad_names"] == 5
    assert "skipped 5 file name(s)" in capsys.readouterr().out


def test_bad_naming_option(tmp_path, capsys):
    raw = make_market(tmp_path / "Market")
    err = user_error(capsys, ["--data_dir", str(raw), "--naming", r"^(?P<pid>\d+"])
    assert "--naming '^(?P<pid>\\\\d+' is not a valid regular expression" in err
    err = user_error(capsys, ["--data_dir", str(raw), "--naming", r"_c(?P<cam>\d+)"])
    assert "has no named group pid: the market layout reads the ids from the file names" in err
    err = user_error(capsys, ["--data_dir", str(raw), "--naming", r"^(?P<person>-?\d+)_c(?P<cam>\d+)"])
    assert "has the named group 'person'" in err


@pytest.mark.parametrize(
    "where, message",
    [
        ("Market/query/out", "is inside the raw split folder"),
        ("Market/bounding_box_train", "is inside the raw split folder"),
        ("Market", "is the data folder itself"),
        (".", "contains the data folder"),
    ],
)
def test_output_inside_the_raw_dataset(tmp_path, capsys, where, message):
    raw = make_market(tmp_path / "Market")
    before = snapshot(raw)
    err = user_error(capsys, ["--data_dir", str(raw), "--output_dir", str(tmp_path / where)])
    assert message in err and "pass another --output_dir" in err
    assert snapshot(raw) == before


@pytest.mark.parametrize("content", [None, "names: [person]\n"])  # a YOLO dataset.yaml is not ours
def test_output_not_ours_is_refused(tmp_path, capsys, content):
    raw, out = make_market(tmp_path / "Market"), tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    if content is not None:
        (out / "dataset.yaml").write_text(content)
    err = user_error(capsys, ["--data_dir", str(raw), "--output_dir", str(out)])
    assert f"--output_dir {out} exists, is not empty and was not written by prepare.py" in err
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["Market", "out"]


def test_output_is_a_file(tmp_path, capsys):
    raw, out = make_market(tmp_path / "Market"), tmp_path / "out"
    out.write_text("")
    assert "is a file, not a folder" in user_error(capsys, ["--data_dir", str(raw), "--output_dir", str(out)])


def test_unwritable_output(tmp_path, capsys, monkeypatch):
    raw = make_market(tmp_path / "Market")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(utils.tempfile, "mkdtemp", denied)
    err = user_error(capsys, ["--data_dir", str(raw)])  # the default output, inside a read-only dataset
    assert f"cannot write --output_dir {raw / 'pytorch'} ({raw}: Permission denied)" in err


# ----------------------------------------------------------------------------------------------------
# Command line


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        prepare.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--data_dir", "--output_dir", "--naming", "--copy", "--skip_bad_names"):
        assert option in text
    assert "(default: ../Market)" in text and "(default: <data_dir>/pytorch)" in text
    assert "(default: auto)" in text


def test_command_line_is_light_and_errors_in_one_line(tmp_path):
    code = "import sys, prepare; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    done = subprocess.run(
        [sys.executable, "prepare.py", "--data_dir", str(tmp_path / "nowhere")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: data folder") and done.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------------------
# Real data


@pytest.mark.skipif(not CUHK01.is_dir(), reason="../shared/data/cuhk01 is not here")
def test_cuhk01(tmp_path):
    out = tmp_path / "cuhk01"
    marker = run(CUHK01, out)
    assert marker["splits"] == {
        "train": {"ids": 485, "images": 1455, "cameras": 2},
        "val": {"ids": 485, "images": 485, "cameras": 1},  # the first image of each id is camera 1's
        "train_all": {"ids": 485, "images": 1940, "cameras": 2},
        "query": {"ids": 486, "images": 486, "cameras": 1},
        "gallery": {"ids": 486, "images": 1458, "cameras": 2},
    }
    assert tree_counts(out) == marker["splits"]
