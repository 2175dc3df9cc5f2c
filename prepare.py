"""Turn a raw re-ID dataset into ImageFolder trees: one folder per person id, for each split.

Reads a raw dataset, which it never writes to, in one of three layouts (`--layout auto` tells them
apart):
- Market-1501 layout: `bounding_box_train/`, `bounding_box_test/`, `query/` and optionally `gt_bbox/`
  (hand-drawn boxes, for multi-query). DukeMTMC-reID has it too, and so does each of CUHK03-NP's
  `detected/` and `labeled/` folders (`--data_dir ../cuhk03-np/detected`).
- MSMT17, recognised by its list files `list_train.txt`, `list_val.txt`, `list_query.txt` and
  `list_gallery.txt` next to the image folders `train/` and `test/` (MSMT17_V1) or `mask_train_v2/`
  and `mask_test_v2/` (MSMT17_V2).
- Your own data, one folder per identity (`folders`): `<data_dir>/<person>/<image>`, any folder and
  file names (`alice/IMG_0001.jpg`); the images directly inside each folder are read. The camera, if
  the names hold one, comes from `--naming` with only the group `cam` (`'_cam(?P<cam>\\d+)'`);
  without it the dataset is camera-less (see data.py).

Writes, under `--output_dir` (default `<data_dir>/pytorch`), `<split>/<person id>/<original name>`
for the splits `train/`, `val/`, `train_all/`, `query/`, `gallery/` and, when `gt_bbox/` exists,
`multi-query/`, plus `dataset.yaml`: the naming (a regular expression) that test.py parses the file
names with again, the absolute data_dir and the counts; it also marks the folder as written here.

- Market layout: train_all = bounding_box_train without junk (-1) and distractor (0000) images;
  val = the first image (in sorted order) of each training identity that has two or more images;
  train = train_all minus val. MSMT17: train, val, query, gallery follow the list files, and
  train_all = train + val.
- Folders layout (`split_identities`): the identities are shuffled with `--seed` and
  `--test_fraction` of them become test identities, the others training ones (train, val and
  train_all as above), so no person is in both. A test identity gives one query per camera, each
  drawn at random, as long as every query keeps a gallery image of its identity from another camera
  (camera-less: one query per identity with two images or more); all its other images are gallery
  images. A test identity seen by one camera only (camera-less: with a single image) gives no query;
  its images are in the gallery, where they are wrong matches for everyone else.
- Ids that are names (a folder `alice`, or a naming whose pid reads `alice`) are numbered 1, 2, ... in
  sorted order (data.number_ids), once, and the table is stored in dataset.yaml under `ids`.
- Every layout: the queries that can have no true match (no gallery image of their id from another
  camera) are counted and named before any training; evaluation skips them.
- The images are hard links to the raw files (symbolic links when hard links fail, e.g. across
  filesystems; copies when both fail, or with `--copy`). Nothing ever writes into them.
- A re-run rebuilds the whole tree in a temporary sibling folder and swaps it in, so the result is
  the same and nothing stale is left; an existing output folder is replaced only if it is one of ours.
- File names are parsed by data.parse_name: `--naming` is `market` (Market-1501, DukeMTMC-reID,
  CUHK03-NP), `msmt17`, or a regular expression with the named groups `pid` and `cam`.

Example:
    python prepare.py --data_dir ../Market
    python prepare.py --data_dir ../VeRi --naming '^(?P<pid>\\d+)_c(?P<cam>\\d+)_'
    python prepare.py --data_dir ../my_people --test_fraction 0.5 --seed 0
"""

import argparse
import os
import random
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from data import (
    DATASET_FILE,
    IMAGE_EXTENSIONS,
    NAMINGS,
    id_text,
    image_labels,
    is_image,
    list_images,
    naming_pattern,
    number_ids,
)
from utils import UserError, check_replaceable, is_marked, replace_folder, run_main, save_yaml

DEFAULT_DATA_DIRS = ("../Market", "../Market-1501-v15.09.15")
DEFAULT_OUTPUT = "<data_dir>/pytorch"
WRITER = "prepare.py"  # dataset.yaml starts with `prepared_by: prepare.py`: an output folder of ours
# Market layout: output split <- raw folder. bounding_box_train becomes train, val and train_all.
MARKET_FOLDERS = {"train_all": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MULTI_QUERY_FOLDER = "gt_bbox"
# MSMT17: output split <- list file, read in the image folder of the first name that exists.
MSMT17_LISTS = {
    "train": "list_train.txt",
    "val": "list_val.txt",
    "query": "list_query.txt",
    "gallery": "list_gallery.txt",
}
MSMT17_FOLDERS = {
    "train": ("train", "mask_train_v2", "mask_train_V2"),
    "val": ("train", "mask_train_v2", "mask_train_V2"),
    "query": ("test", "mask_test_v2", "mask_test_V2"),
    "gallery": ("test", "mask_test_v2", "mask_test_V2"),
}
SPLITS = ("train", "val", "train_all", "query", "gallery", "multi-query")
LAYOUTS = ("auto", "market", "msmt17", "folders")
SHOWN = 3  # file names a message lists


class Image(NamedTuple):
    path: Path  # the raw file
    pid: int
    cam: int
    folder: str  # the person id as written (file name or folder): the ImageFolder class folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--data_dir",
        default=DEFAULT_DATA_DIRS[0],
        help=f"raw dataset folder; the default falls back to {DEFAULT_DATA_DIRS[1]} when it doesn't exist",
    )
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT, help="folder to write the splits to")
    parser.add_argument(
        "--layout",
        default="auto",
        choices=LAYOUTS,
        help="raw layout; auto = msmt17 when MSMT17 list files are found, market when a Market-1501 "
        "folder is, else folders (one folder per identity) when subfolders hold images",
    )
    parser.add_argument(
        "--naming",
        default="auto",
        help=f"file naming: one of {sorted(NAMINGS)}, or a regular expression with the named groups "
        "(?P<pid>...) and (?P<cam>...), or pid alone (camera-less); with --layout folders, cam alone or "
        "nothing. auto = msmt17 for MSMT17, market for a Market layout (ids -1 and 0000 in "
        "bounding_box_train are junk/distractors, not trained on), camera-less for folders",
    )
    parser.add_argument(
        "--test_fraction",
        type=float,
        default=0.5,
        help="folders layout: the share of identities held out for query and gallery",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="folders layout: seed of the identity split and query draw"
    )
    parser.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    parser.add_argument(
        "--skip_bad_names",
        action="store_true",
        help="skip (and count) image files whose names don't match the naming, instead of stopping",
    )
    return parser


def find_data_dir(data_dir: str) -> Path:
    """The raw dataset folder, absolute; the default name falls back to the classic archive name."""
    candidates = DEFAULT_DATA_DIRS if data_dir == DEFAULT_DATA_DIRS[0] else (data_dir,)
    for candidate in candidates:
        if Path(candidate).is_dir():
            return Path(candidate).resolve()
    if Path(data_dir).exists():
        raise UserError(f"--data_dir {data_dir} is not a folder: give the raw dataset folder")
    looked = " and ".join(candidates) + ("" if Path(data_dir).is_absolute() else f" in {os.getcwd()}")
    raise UserError(
        f"data folder not found (looked for {looked}): pass --data_dir with the raw dataset folder"
    )


def read_market(data_dir: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Raw files per source split of a Market-1501 layout, and the raw folders read."""
    folders = dict(MARKET_FOLDERS)
    if (data_dir / MULTI_QUERY_FOLDER).is_dir():
        folders["multi-query"] = MULTI_QUERY_FOLDER
    sources = {}
    for split, name in folders.items():
        folder = data_dir / name
        if not folder.is_dir():
            # CUHK03-NP keeps two Market layouts side by side: point at the one to use.
            inner = sorted(p.name for p in data_dir.iterdir() if (p / MARKET_FOLDERS["train_all"]).is_dir())
            hint = (
                f"it holds {', '.join(p + '/' for p in inner)} with that layout: pass e.g. "
                f"--data_dir {data_dir / inner[0]}"
                if inner
                else "--data_dir must hold bounding_box_train/, bounding_box_test/ and query/ (Market-1501 "
                "layout) or the MSMT17 list files"
            )
            raise UserError(f"{data_dir} has no {name}/ folder: {hint}")
        sources[split] = list_images(folder)
        if not sources[split]:
            raise UserError(
                f"{folder} has no images ({' '.join(IMAGE_EXTENSIONS)}): put the split's images there "
                "or pass --data_dir with the right dataset folder"
            )
    return sources, [data_dir / name for name in folders.values()]


def read_msmt17(data_dir: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Raw files per split of MSMT17 (V1 or V2), read from its list files, and the raw folders read."""
    sources, raw_folders = {}, []
    for split, list_name in MSMT17_LISTS.items():
        list_file = data_dir / list_name
        if not list_file.is_file():
            raise UserError(
                f"{data_dir} has MSMT17 list files but not {list_name}: restore it from the MSMT17 archive"
            )
        folder = next((data_dir / f for f in MSMT17_FOLDERS[split] if (data_dir / f).is_dir()), None)
        if folder is None:
            raise UserError(
                f"{data_dir} has {list_name} but no image folder {' or '.join(MSMT17_FOLDERS[split])}/: "
                "extract the MSMT17 images next to the list files"
            )
        raw_folders.append(folder)
        paths = []
        for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            path = folder / line.split()[0]
            if not path.is_file():
                raise UserError(
                    f"{list_file} line {line_no}: {path} not found: the list file doesn't match the images "
                    "in that folder; re-extract the dataset"
                )
            paths.append(path)
        if not paths:
            raise UserError(f"{list_file} lists no images: restore it from the MSMT17 archive")
        sources[split] = paths
    return sources, raw_folders


def detect_layout(data_dir: Path) -> str:
    """--layout auto: msmt17 (its list files), market (one of its folders), folders (a subfolder
    holding images), else market, whose error message says what the layout needs."""
    if any((data_dir / name).is_file() for name in MSMT17_LISTS.values()):
        return "msmt17"
    if any((data_dir / name).is_dir() for name in MARKET_FOLDERS.values()):
        return "market"
    for entry in os.scandir(data_dir):
        if entry.is_dir() and not entry.name.startswith(".") and any(map(is_image, os.listdir(entry))):
            return "folders"
    return "market"


def read_folders(data_dir: Path, output_dir: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """The images of a folders layout, one folder per identity, as the single source split "all",
    and the identity folders read. The output folder and other prepared trees are not identities."""
    folders = []
    for entry in sorted(os.scandir(data_dir), key=lambda entry: entry.name):
        folder = Path(entry.path)
        if not entry.is_dir() or entry.name.startswith(".") or folder.resolve() == output_dir:
            continue
        if is_marked(folder, DATASET_FILE, f"prepared_by: {WRITER}"):
            continue
        folders.append(folder)
    paths = [path for folder in folders for path in list_images(folder)]
    if not paths:
        raise UserError(
            f"{data_dir} has no identity folders with images in them (folders layout: "
            f"{data_dir}/<person>/<image>): put each person's images in a folder of their own"
        )
    return {"all": paths}, folders


def check_output_dir(output_dir: Path, data_dir: Path, raw_folders: list[Path]) -> None:
    """Refuse an output folder that would write into the raw dataset or replace a folder not ours."""
    what_to_do = f"pass another --output_dir (default {DEFAULT_OUTPUT})"
    if output_dir == data_dir:
        raise UserError(f"--output_dir {output_dir} is the data folder itself: {what_to_do}")
    for folder in raw_folders:
        if output_dir == folder or folder in output_dir.parents:
            raise UserError(
                f"--output_dir {output_dir} is inside the raw split folder {folder}: {what_to_do}"
            )
    if output_dir in data_dir.parents:
        raise UserError(f"--output_dir {output_dir} contains the data folder {data_dir}: {what_to_do}")
    check_replaceable(output_dir, DATASET_FILE, f"prepared_by: {WRITER}", WRITER, "--output_dir")


def parse_sources(
    sources: dict[str, list[Path]], naming
) -> tuple[dict[str, list[Image]], list[Path], dict[str, int] | None]:
    """Parse every raw file: the images per source split, the files whose names don't match, and the
    table of ids when the ids are names (data.number_ids: every id of every split, numbered once)."""
    texts, bad = {}, []
    for paths in sources.values():
        for path in paths:
            try:
                texts[path] = id_text(path, naming)
            except ValueError:
                bad.append(path)
    ids = number_ids(texts.values())
    parsed, folders = {}, {}
    for split, paths in sources.items():
        parsed[split] = []
        for path in paths:
            if path not in texts:
                continue
            try:
                pid, cam = image_labels(path, naming, ids)
            except ValueError:  # e.g. a camera that is not a number
                bad.append(path)
                continue
            folder = folders.setdefault(pid, texts[path])  # one folder per id, even if spelled "2" and "0002"
            parsed[split].append(Image(path, pid, cam, folder))
    return parsed, bad, ids


def split_identities(
    images: list[Image], test_fraction: float, seed: int, cameras: bool
) -> tuple[dict, list]:
    """Split a folders layout into train_all, query and gallery by identity (module docstring).

    Returns the source splits and the test identities that give no query (one camera, or camera-less
    with one image). `cameras`: whether the naming reads cameras.
    """
    by_pid: dict[int, list[Image]] = {}
    for image in sorted(images, key=lambda image: (image.pid, image.path.name)):
        by_pid.setdefault(image.pid, []).append(image)
    if len(by_pid) < 2:
        raise UserError(
            f"only {len(by_pid)} identity folder: the folders layout needs two or more people, some for "
            "training and some for testing"
        )
    rng = random.Random(seed)
    order = sorted(by_pid)
    rng.shuffle(order)
    n_test = min(len(order) - 1, max(1, round(test_fraction * len(order))))
    test = set(order[:n_test])
    splits = {"train_all": [image for pid in sorted(by_pid) if pid not in test for image in by_pid[pid]]}
    splits["query"], splits["gallery"], no_query = [], [], []
    for pid in sorted(test):
        queries = pick_queries(by_pid[pid], rng, cameras)
        if not queries:
            no_query.append(pid)
        splits["query"] += queries
        splits["gallery"] += [image for image in by_pid[pid] if image not in queries]
    return splits, no_query


def pick_queries(images: list[Image], rng: random.Random, cameras: bool) -> list[Image]:
    """The queries of one test identity: one image per camera, drawn at random, cameras in random
    order, each kept only if every query then still has a gallery image from another camera.
    Camera-less: one image, if the identity has two or more."""
    if not cameras:
        return [rng.choice(images)] if len(images) > 1 else []
    cams = sorted({image.cam for image in images})
    rng.shuffle(cams)
    queries: list[Image] = []
    for cam in cams:
        query = rng.choice([image for image in images if image.cam == cam])
        gallery_cams = Counter(image.cam for image in images if image not in queries and image is not query)
        if all(any(c != q.cam for c in gallery_cams) for q in [*queries, query]):
            queries.append(query)
    return queries


def queries_without_match(splits: dict[str, list[Image]]) -> list[Image]:
    """The queries with no true match in the gallery, by the Market-1501 rule (metrics.protocol_masks)."""
    import numpy as np

    from metrics import protocol_masks, query_chunk_rows

    queries, gallery = splits.get("query", []), splits.get("gallery", [])
    if not queries or not gallery:
        return list(queries)
    g_pid, g_cam = (np.array(values) for values in zip(*[(image.pid, image.cam) for image in gallery]))
    rows = query_chunk_rows(len(gallery))
    alone = []
    for start in range(0, len(queries), rows):
        chunk = queries[start : start + rows]
        good, _ = protocol_masks([q.pid for q in chunk], [q.cam for q in chunk], g_pid, g_cam)
        alone += [query for query, has in zip(chunk, good.any(axis=1)) if not has]
    return alone


def make_splits(parsed: dict[str, list[Image]], zero_is_distractor: bool) -> tuple[dict, dict]:
    """The output splits (name -> images), and the counts junk_train and single_image_ids.

    junk_train: junk/distractor images left out of training; single_image_ids: training identities
    with a single image, which stays in train (so train has every class) and gives no val image.
    """
    splits = {}
    notes = {"junk_train": 0, "single_image_ids": 0}

    def is_training(image: Image) -> bool:
        return image.pid > 0 or (image.pid == 0 and not zero_is_distractor)

    if "train_all" in parsed:  # Market layout: hold out one image per identity for val.
        train_all = [image for image in parsed["train_all"] if is_training(image)]
        notes["junk_train"] = len(parsed["train_all"]) - len(train_all)
        by_pid: dict[int, list[Image]] = {}
        for image in sorted(train_all, key=lambda image: image.path.name):
            by_pid.setdefault(image.pid, []).append(image)
        # An identity with a single image stays in train: every training class keeps a sample.
        val = [images[0] for images in by_pid.values() if len(images) > 1]
        notes["single_image_ids"] = sum(len(images) == 1 for images in by_pid.values())
        held_out = {image.path for image in val}
        splits["train"] = [image for image in train_all if image.path not in held_out]
        splits["val"] = val
        splits["train_all"] = train_all
    else:  # MSMT17: the list files give train and val.
        for split in ("train", "val"):
            splits[split] = [image for image in parsed[split] if is_training(image)]
            notes["junk_train"] += len(parsed[split]) - len(splits[split])
        splits["train_all"] = splits["train"] + splits["val"]
    for split in ("query", "gallery", "multi-query"):
        if split in parsed:
            splits[split] = parsed[split]
    return {split: dedupe(split, splits[split]) for split in SPLITS if split in splits}, notes


def dedupe(split: str, images: list[Image]) -> list[Image]:
    """Drop repeats of one raw file; refuse two different files that would land on one output path."""
    seen: dict[tuple[str, str], Path] = {}
    kept = []
    for image in images:
        key = (image.folder, image.path.name)
        if key in seen:
            if seen[key] != image.path:
                raise UserError(
                    f"{seen[key]} and {image.path} would both be {split}/{key[0]}/{key[1]}: rename one"
                )
            continue
        seen[key] = image.path
        kept.append(image)
    return kept


def place(src: Path, dst: Path, mode: str) -> str:
    """Put `src` at `dst` as a hard link, else a symbolic link, else a copy, starting at `mode`.

    Returns the mode that worked, so the caller starts there next time instead of failing again.
    """
    if mode == "hard":
        try:
            os.link(src, dst)
            return "hard"
        except FileExistsError:
            raise
        except OSError:  # e.g. another filesystem, or links not allowed
            mode = "symlink"
    if mode == "symlink":
        try:
            os.symlink(src.resolve(), dst)
            return "symlink"
        except FileExistsError:
            raise
        except OSError:
            pass
    shutil.copyfile(src, dst)
    return "copy"


def write_tree(root: Path, splits: dict[str, list[Image]], copy: bool) -> Counter:
    """Write `root/<split>/<folder>/<name>` for every image; return how many of each file kind."""
    mode = "copy" if copy else "hard"
    kinds = Counter()
    for split, images in splits.items():
        for folder in sorted({image.folder for image in images}):
            (root / split / folder).mkdir(parents=True)
        for image in images:
            mode = place(image.path, root / split / image.folder / image.path.name, mode)
            kinds[mode] += 1
    return kinds


def split_counts(images: list[Image], cameras: bool = True) -> dict[str, int]:
    """Ids, images and cameras of a split; cameras 0 for a camera-less dataset."""
    return {
        "ids": len({image.pid for image in images}),
        "images": len(images),
        "cameras": len({image.cam for image in images}) if cameras else 0,
    }


def format_table(counts: dict[str, dict[str, int]]) -> str:
    """The counts of every split, one row each; "-" cameras for a camera-less dataset."""
    rows = [f"{'split':<12}{'ids':>8}{'images':>9}{'cameras':>9}"]
    for split, c in counts.items():
        cameras = f"{c['cameras']:,}" if c["cameras"] else "-"
        rows.append(f"{split:<12}{c['ids']:>8,}{c['images']:>9,}{cameras:>9}")
    return "\n".join(rows)


def read_naming_option(naming: str, layout: str):
    """The compiled --naming for `layout`: the ids come from the file names, or from the folders."""
    if naming == "auto":
        naming = None if layout == "folders" else layout
    try:
        pattern = naming_pattern(naming)
    except ValueError as err:
        raise UserError(str(err)) from None
    if layout == "folders" and "pid" in pattern.groupindex:
        raise UserError(
            f"--naming {pattern.pattern!r} reads a pid, but in the folders layout the id is the folder's "
            "name: give a naming with only the group cam, or none (camera-less)"
        )
    if layout != "folders" and "pid" not in pattern.groupindex:
        raise UserError(
            f"--naming {pattern.pattern!r} has no named group pid: the {layout} layout reads the ids from "
            "the file names (for one folder per identity, --layout folders)"
        )
    return pattern


def main(argv=None) -> dict:
    """Prepare the dataset; return what dataset.yaml holds."""
    args = build_parser().parse_args(argv)
    if not 0 < args.test_fraction < 1:
        raise UserError(f"--test_fraction {args.test_fraction}: give a share between 0 and 1, e.g. 0.5")
    start = time.perf_counter()
    data_dir = find_data_dir(args.data_dir)
    layout = detect_layout(data_dir) if args.layout == "auto" else args.layout
    pattern = read_naming_option(args.naming, layout)
    cameras = "cam" in pattern.groupindex
    output_dir = data_dir / "pytorch" if args.output_dir == DEFAULT_OUTPUT else Path(args.output_dir)
    output_dir = output_dir.resolve()
    readers = {"market": read_market, "msmt17": read_msmt17}
    if layout == "folders":
        sources, raw_folders = read_folders(data_dir, output_dir)
    else:
        sources, raw_folders = readers[layout](data_dir)
    check_output_dir(output_dir, data_dir, raw_folders)

    parsed, bad, ids = parse_sources(sources, pattern)
    if bad and not args.skip_bad_names:
        shown = ", ".join(str(path.relative_to(data_dir)) for path in bad[:SHOWN])
        groups = "the group cam" if layout == "folders" else "the groups pid and cam"
        raise UserError(
            f"{len(bad)} file name(s) in {data_dir} do not match the naming {pattern.pattern!r} "
            f"(first: {shown}): "
            f"pass --naming ({' or '.join(sorted(NAMINGS))} or a regular expression with {groups}), or "
            "--skip_bad_names to skip them"
        )
    no_query = []
    if layout == "folders":
        parsed, no_query = split_identities(parsed["all"], args.test_fraction, args.seed, cameras)
    # -1 (junk) is never trained on; 0000 is a distractor only in Market-1501 naming.
    splits, notes = make_splits(parsed, zero_is_distractor=pattern.pattern == NAMINGS["market"])
    for split, images in splits.items():
        if not images:
            raise UserError(
                f"the {split} split of {data_dir} would be empty (nothing left after skipping junk, "
                "single-image identities or bad names): check the dataset and --naming"
            )
    unmatched = queries_without_match(splits)

    counts = {split: split_counts(images, cameras) for split, images in splits.items()}
    marker = {
        "prepared_by": WRITER,
        "naming": pattern.pattern,
        "data_dir": str(data_dir),
        "layout": layout,
        "splits": counts,
        "skipped": {"junk_train": notes["junk_train"], "bad_names": len(bad)},
        "single_image_ids": notes["single_image_ids"],
        "queries_without_match": len(unmatched),
    }
    if layout == "folders":
        marker["identity_split"] = {"seed": args.seed, "test_fraction": args.test_fraction,
                                    "test_ids_without_query": len(no_query)}  # fmt: skip
    if ids is not None:
        marker["ids"] = ids

    def build(tmp: Path) -> None:
        kinds = write_tree(tmp, splits, args.copy)
        marker["files"] = {"hard_links": kinds["hard"], "symlinks": kinds["symlink"], "copies": kinds["copy"]}
        save_yaml(tmp / DATASET_FILE, marker)

    try:
        replace_folder(output_dir, build)
    except OSError as err:
        where = err.filename or output_dir.parent
        raise UserError(
            f"cannot write --output_dir {output_dir} ({where}: {err.strerror}); pass a writable --output_dir"
        ) from None

    described = pattern.pattern if pattern.pattern else "none: ids from folders"
    print(f"prepared {data_dir} -> {output_dir} ({layout} layout, naming {described!r})")
    print(format_table(counts))
    if not cameras:
        print(
            "note: camera-less: every other image of a query's id is a true match, the query's own excluded"
        )
    if ids is not None:
        print(f"note: the {len(ids)} ids are names, numbered 1..{len(ids)} in dataset.yaml (ids)")
    if notes["junk_train"]:
        print(f"note: left {notes['junk_train']} junk/distractor images (ids -1, 0000) out of training")
    if notes["single_image_ids"]:
        print(f"note: {notes['single_image_ids']} training identities have one image: in train, not in val")
    if no_query:
        what = "a single image" if not cameras else "images from one camera only"
        print(
            f"note: {len(no_query)} test identities have {what}, so no query of theirs could have a true "
            "match: their images are in the gallery only"
        )
    if unmatched:
        shown = ", ".join(f"{image.folder}/{image.path.name}" for image in unmatched[:SHOWN])
        print(
            f"note: {len(unmatched)} of {len(splits['query'])} queries have no true match in the gallery "
            f"(no image of their id from another camera), so evaluation will skip them; first: {shown}"
        )
    if bad:
        print(f"note: skipped {len(bad)} file name(s) that don't match the naming (--skip_bad_names)")
    files = ", ".join(f"{n:,} {kind.replace('_', ' ')}" for kind, n in marker["files"].items() if n)
    print(f"files: {files}; done in {time.perf_counter() - start:.2f} s")
    return marker


if __name__ == "__main__":
    run_main(main)
