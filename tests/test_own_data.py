"""Own data: one folder per identity, ids that are names, camera-less datasets, from prepare.py to the
metrics, and the queries that can have no true match reported before any training."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import evaluate
import prepare
import test as test_script
import train
from data import own_camera
from features import load_features
from metrics import protocol_masks
from utils import load_yaml

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
CAM_NAMING = r"_cam(?P<cam>\d+)_"


def write_person(path: Path, person: int, seed: int, size=(16, 32)) -> None:
    """A (width, height) = size image of a person: a colour of their own, a little noise."""
    rng = np.random.default_rng([person, seed])
    colour = np.random.default_rng(person).integers(0, 256, 3)
    pixels = np.clip(colour + rng.integers(-15, 15, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_folders(root: Path, cams_per_person: dict[str, list[int]] | None = None, per_cam: int = 2) -> Path:
    """One folder per identity, `<name>/<name>_cam<C>_<k>.jpg`; by default every person has two
    images from each of cameras 1 and 2."""
    cams_per_person = cams_per_person or {name: [1, 2] for name in NAMES}
    for person, (name, cams) in enumerate(cams_per_person.items()):
        for cam in cams:
            for k in range(per_cam):
                write_person(root / name / f"{name}_cam{cam}_{k:04d}.jpg", person, 10 * cam + k)
    return root


def split_of(out: Path, split: str) -> dict[str, list[str]]:
    """Folder -> file names of a prepared split."""
    return {p.name: sorted(f.name for f in p.iterdir()) for p in sorted((out / split).iterdir())}


def cam(name: str) -> int:
    return int(name.split("_cam")[1].split("_")[0])


def prepare_run(raw: Path, out: Path, *args: str) -> dict:
    return prepare.main(["--data_dir", str(raw), "--output_dir", str(out), *args])


# ----------------------------------------------------------------------------------------------------
# prepare.py: one folder per identity.


def test_folders_split_is_disjoint_every_query_matched_and_seeded(tmp_path, capsys):
    raw = make_folders(tmp_path / "people")
    out = tmp_path / "out"
    marker = prepare_run(raw, out, "--naming", CAM_NAMING)  # --layout auto finds the folders
    printed = capsys.readouterr().out
    assert marker["layout"] == "folders" and "folders layout" in printed
    assert marker["ids"] == {name: i for i, name in enumerate(NAMES, start=1)}  # names, numbered in order
    assert marker["identity_split"] == {"seed": 0, "test_fraction": 0.5, "test_ids_without_query": 0}
    train_ids = set(split_of(out, "train_all"))
    query, gallery = split_of(out, "query"), split_of(out, "gallery")
    assert len(train_ids) == 5 and set(query) == set(gallery) and len(query) == 5
    assert not train_ids & set(gallery)  # no person both trained on and tested
    assert set(split_of(out, "train")) | set(split_of(out, "val")) == train_ids
    for person, names in query.items():
        assert sorted(cam(n) for n in names) == [1, 2]  # one query per camera
        for name in names:  # ... each with a gallery image of its id from the other camera
            assert any(cam(g) != cam(name) for g in gallery[person])
        assert not set(names) & set(gallery[person])
    assert marker["queries_without_match"] == 0 and "no true match" not in printed
    # Seeded: the same seed gives the same split, another seed another one.
    again = prepare_run(raw, tmp_path / "again", "--naming", CAM_NAMING)
    assert split_of(tmp_path / "again", "query") == query and again["splits"] == marker["splits"]
    prepare_run(raw, tmp_path / "seed1", "--naming", CAM_NAMING, "--seed", "1", "--test_fraction", "0.3")
    assert set(split_of(tmp_path / "seed1", "query")) != set(query)
    assert len(split_of(tmp_path / "seed1", "query")) == 3


def test_folders_camera_less_and_identities_that_give_no_query(tmp_path, capsys):
    people = {name: [1, 2] for name in NAMES[:6]}
    people["alone"] = [1]  # one camera, one image
    raw = make_folders(tmp_path / "people", people, per_cam=1)
    out = tmp_path / "out"
    marker = prepare_run(raw, out, "--test_fraction", "0.99")  # every identity but one is a test one
    printed = capsys.readouterr().out
    assert marker["naming"] == "" and "naming 'none: ids from folders'" in printed
    assert all(counts["cameras"] == 0 for counts in marker["splits"].values())
    rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.startswith("query")}
    assert rows["query"][2] == "-"
    assert "camera-less: every other image of a query's id is a true match" in printed
    query, gallery = split_of(out, "query"), split_of(out, "gallery")
    test_ids = set(gallery)
    assert len(test_ids) == 6 and not test_ids & set(split_of(out, "train_all"))
    # Seed 0 makes "alone" a test identity: with a single image no query of theirs could have a match,
    # so that image is in the gallery only.
    assert "alone" in test_ids and "alone" not in query
    assert marker["identity_split"]["test_ids_without_query"] == 1
    assert "1 test identities have a single image" in printed
    assert all(len(names) == 1 for names in query.values())  # camera-less: one query per identity
    assert marker["queries_without_match"] == 0


def test_folders_identity_seen_by_one_camera_gives_no_query(tmp_path, capsys):
    people = {name: [1, 2] for name in NAMES[:4]}
    people["onecam"] = [3]
    raw = make_folders(tmp_path / "people", people)
    marker = prepare_run(raw, tmp_path / "out", "--naming", CAM_NAMING, "--test_fraction", "0.99")
    assert "onecam" in split_of(tmp_path / "out", "gallery")
    assert "onecam" not in split_of(tmp_path / "out", "query")
    assert marker["identity_split"]["test_ids_without_query"] == 1
    assert "1 test identities have images from one camera only" in capsys.readouterr().out


def test_folders_option_errors(tmp_path, capsys):
    raw = make_folders(tmp_path / "people", {"alice": [1, 2]})
    with pytest.raises(Exception, match="only 1 identity folder"):
        prepare_run(raw, tmp_path / "out")
    raw = make_folders(tmp_path / "people")
    with pytest.raises(Exception, match="reads a pid, but in the folders layout the id is the folder's name"):
        prepare_run(raw, tmp_path / "out", "--naming", "market")
    with pytest.raises(Exception, match="--test_fraction 1.0: give a share between 0 and 1"):
        prepare_run(raw, tmp_path / "out", "--test_fraction", "1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="has no identity folders with images"):
        prepare_run(tmp_path / "empty", tmp_path / "out", "--layout", "folders")
    odd = make_folders(tmp_path / "odd", {"a": [1, 2], "b": [1, 2], "c": [7, 8, 9]})
    with pytest.raises(Exception, match=r"6 file name\(s\) .* a regular expression with the group cam\)"):
        prepare_run(odd, tmp_path / "out", "--naming", r"_cam(?P<cam>[12])_")


def test_rerun_on_the_default_output_skips_the_prepared_tree(tmp_path):
    raw = make_folders(tmp_path / "people")
    first = prepare.main(["--data_dir", str(raw)])  # writes people/pytorch, next to the identity folders
    second = prepare.main(["--data_dir", str(raw)])
    assert first["ids"] == second["ids"] and "pytorch" not in second["ids"]


# ----------------------------------------------------------------------------------------------------
# prepare.py: Market layout with ids that are names, camera-less names, unmatched queries.


def make_named_market(root: Path, naming: str) -> Path:
    """A Market-layout tree of 6 people with names as ids: `alice_cam1_0001.jpg` (or without the
    camera, `alice_0001.jpg`, for the camera-less naming)."""
    for person, name in enumerate(NAMES[:6]):
        train = person < 3
        for k, c in enumerate([1, 2, 1, 2]):
            file = f"{name}_cam{c}_{k:04d}.jpg" if "cam" in naming else f"{name}_{k:04d}.jpg"
            folder = "bounding_box_train" if train else ("query" if k == 0 else "bounding_box_test")
            write_person(root / folder / file, person, k)
    return root


def test_market_layout_with_ids_that_are_names(tmp_path, capsys):
    naming = r"^(?P<pid>[a-z]+)_cam(?P<cam>\d+)_"
    raw = make_named_market(tmp_path / "named", naming)
    marker = prepare_run(raw, tmp_path / "out", "--naming", naming)
    assert marker["ids"] == {name: i for i, name in enumerate(sorted(NAMES[:6]), start=1)}
    assert sorted(os.listdir(tmp_path / "out" / "train")) == ["alice", "bob", "carol"]
    assert marker["splits"]["query"] == {"ids": 3, "images": 3, "cameras": 1}
    assert "the 6 ids are names, numbered 1..6 in dataset.yaml (ids)" in capsys.readouterr().out


def test_unmatched_queries_are_reported_before_training(tmp_path, capsys):
    naming = r"^(?P<pid>[a-z]+)_cam(?P<cam>\d+)_"
    raw = make_named_market(tmp_path / "named", naming)
    # dave's only other-camera image leaves the gallery: his query (camera 1) keeps camera-1 images only.
    (raw / "bounding_box_test" / "dave_cam2_0001.jpg").unlink()
    (raw / "bounding_box_test" / "dave_cam2_0003.jpg").unlink()
    marker = prepare_run(raw, tmp_path / "out", "--naming", naming)
    assert marker["queries_without_match"] == 1
    assert (
        "note: 1 of 3 queries have no true match in the gallery (no image of their id from another camera), "
        "so evaluation will skip them; first: dave/dave_cam1_0000.jpg"
    ) in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------
# End to end: prepare -> train -> test -> evaluate on camera-less and name-id datasets.


def run_pipeline(raw: Path, work: Path, monkeypatch, *prepare_args: str) -> tuple[dict, dict, list]:
    prepared = work / "prepared"
    marker = prepare_run(raw, prepared, *prepare_args)
    monkeypatch.chdir(work)
    train.main(["--name", "own", "--data_dir", str(prepared), "--backbone", "resnet18", "--no-pretrained",
                "--gpu_ids", "-1", "--height", "64", "--width", "32", "--batchsize", "4", "--total_epoch", "1",
                "--train_all"])  # fmt: skip
    test_script.main(
        ["--name", "own", "--test_dir", str(prepared), "--gpu_ids", "-1", "--result_file", "own.mat"]
    )
    results = evaluate.main(["--result_file", "own.mat"])
    return marker, load_features(work / "own.mat"), results


def test_camera_less_name_ids_end_to_end_excludes_only_the_query_itself(tmp_path, monkeypatch):
    naming = r"^(?P<pid>[a-z]+)_"
    raw = make_named_market(tmp_path / "raw", naming)
    # The query's own image is in the gallery too, as some datasets have it.
    for query in (raw / "query").iterdir():
        (raw / "bounding_box_test" / query.name).write_bytes(query.read_bytes())
    marker, feats, results = run_pipeline(raw, tmp_path, monkeypatch, "--naming", naming)
    ids = marker["ids"]
    assert sorted(feats["query_label"]) == [ids["dave"], ids["erin"], ids["frank"]]
    names = [Path(p).name for p in feats["query_path"]]
    assert feats["query_cam"].tolist() == [own_camera(name) for name in names]
    good, junk = protocol_masks(
        feats["query_label"], feats["query_cam"], feats["gallery_label"], feats["gallery_cam"]
    )
    gallery_names = [Path(p).name for p in feats["gallery_path"]]
    for i, name in enumerate(names):  # junk: exactly the query's own image; true matches: the 3 others
        assert [gallery_names[j] for j in np.flatnonzero(junk[i])] == [name]
        assert good[i].sum() == 3
    assert results[0]["n_evaluated"] == 3 and results[0]["n_skipped"] == 0


def test_folders_with_cameras_end_to_end(tmp_path, monkeypatch):
    raw = make_folders(tmp_path / "people")
    marker, feats, results = run_pipeline(raw, tmp_path, monkeypatch, "--naming", CAM_NAMING)
    assert set(feats["gallery_cam"].tolist()) == {1, 2}
    query_people = {Path(p).parent.name for p in feats["query_path"]}
    assert sorted(feats["query_label"].tolist()) == sorted(2 * [marker["ids"][name] for name in query_people])
    assert (
        results[0]["n_evaluated"] == 10
        and load_yaml(tmp_path / "prepared/dataset.yaml")["ids"] == marker["ids"]
    )
