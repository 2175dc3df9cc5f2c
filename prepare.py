"""Turn a raw re-ID dataset into ImageFolder trees: one folder per person id, for each split.

Reads a raw dataset, which it never writes to, in one of two layouts:
- Market-1501 layout: `bounding_box_train/`, `bounding_box_test/`, `query/` and optionally `gt_bbox/`
  (hand-drawn boxes, for multi-query). DukeMTMC-reID has it too, and so does each of CUHK03-NP's
  `detected/` and `labeled/` folders (`--data_dir ../cuhk03-np/detected`).
- MSMT17, recognised by its list files `list_train.txt`, `list_val.txt`, `list_query.txt` and
  `list_gallery.txt` next to the image folders `train/` and `test/` (MSMT17_V1) or `mask_train_v2/`
  and `mask_test_v2/` (MSMT17_V2).

Writes, under `--output_dir` (default `<data_dir>/pytorch`), `<split>/<person id>/<original name>`
for the splits `train/`, `val/`, `train_all/`, `query/`, `gallery/` and, when `gt_bbox/` exists,
`multi-query/`, plus `dataset.yaml`: the naming (a regular expression) that test.py parses the file
names with again, the absolute data_dir and the counts; it also marks the folder as written here.

- Market layout: train_all = bounding_box_train without junk (-1) and distractor (0000) images;
  val = the first image (in sorted order) of each training identity that has two or more images;
  train = train_all minus val. MSMT17: train, val, query, gallery follow the list files, and
  train_all = train + val.
- The images are hard links to the raw files (symbolic links when hard links fail, e.g. across
  filesystems; copies when both fail, or with `--copy`). Nothing ever writes into them.
- A re-run rebuilds the whole tree in a temporary sibling folder and swaps it in, so the result is
  the same and nothing stale is left; an existing output folder is replaced only if it is one of ours.
- File names are parsed by data.parse_name: `--naming` is `market` (Market-1501, DukeMTMC-reID,
  CUHK03-NP), `msmt17`, or a regular expression with the named groups `pid` and `cam`.

Example:
    python prepare.py --data_dir ../Market
    python prepare.py --data_dir ../VeRi --naming '^(?P<pid>\\d+)_c(?P<cam>\\d+)_'
"""

import argparse
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from data import DATASET_FILE, IMAGE_EXTENSIONS, NAMINGS, list_images, match_name, naming_pattern, parse_name
from utils import UserError, check_replaceable, replace_folder, run_main, save_yaml

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


class Image(NamedTuple):
    path: Path  # the raw file
    pid: int
    cam: int
    folder: str  # the person id as written in the file name: the ImageFolder class folder


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
        "--naming",
        default="auto",
        help=f"file naming: one of {sorted(NAMINGS)}, or a regular expression with the named groups "
        "(?P<pid>...) and (?P<cam>...); auto = msmt17 when MSMT17 list files are found, else market "
        "(with market, ids -1 and 0000 in bounding_box_train are junk/distractors, not trained on)",
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


def parse_sources(sources: dict[str, list[Path]], naming) -> tuple[dict[str, list[Image]], list[Path]]:
    """Parse every raw file name: the images per source split, and the files whose names don't match."""
    parsed, bad, folders = {}, [], {}
    for split, paths in sources.items():
        parsed[split] = []
        for path in paths:
            try:
                pid, cam = parse_name(path.name, naming)
            except ValueError:
                bad.append(path)
                continue
            if pid not in folders:  # one folder name per id, even if spelled "2" and "0002"
                folders[pid] = match_name(path.name, naming)["pid"]
            parsed[split].append(Image(path, pid, cam, folders[pid]))
    return parsed, bad


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


def split_counts(images: list[Image]) -> dict[str, int]:
    return {
        "ids": len({image.pid for image in images}),
        "images": len(images),
        "cameras": len({image.cam for image in images}),
    }


def format_table(counts: dict[str, dict[str, int]]) -> str:
    rows = [f"{'split':<12}{'ids':>8}{'images':>9}{'cameras':>9}"]
    rows += [f"{split:<12}{c['ids']:>8,}{c['images']:>9,}{c['cameras']:>9,}" for split, c in counts.items()]
    return "\n".join(rows)


def main(argv=None) -> dict:
    """Prepare the dataset; return what dataset.yaml holds."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    data_dir = find_data_dir(args.data_dir)
    layout = "msmt17" if any((data_dir / name).is_file() for name in MSMT17_LISTS.values()) else "market"
    naming = layout if args.naming == "auto" else args.naming
    try:
        pattern = naming_pattern(naming)
    except ValueError as err:
        raise UserError(str(err)) from None
    sources, raw_folders = read_msmt17(data_dir) if layout == "msmt17" else read_market(data_dir)
    output_dir = data_dir / "pytorch" if args.output_dir == DEFAULT_OUTPUT else Path(args.output_dir)
    output_dir = output_dir.resolve()
    check_output_dir(output_dir, data_dir, raw_folders)

    parsed, bad = parse_sources(sources, pattern)
    if bad and not args.skip_bad_names:
        shown = ", ".join(str(path.relative_to(data_dir)) for path in bad[:3])
        raise UserError(
            f"{len(bad)} file name(s) in {data_dir} do not match the naming {pattern.pattern!r} "
            f"(first: {shown}): "
            f"pass --naming ({' or '.join(sorted(NAMINGS))} or a regular expression with the groups pid and "
            "cam), or --skip_bad_names to skip them"
        )
    # -1 (junk) is never trained on; 0000 is a distractor only in Market-1501 naming.
    splits, notes = make_splits(parsed, zero_is_distractor=pattern.pattern == NAMINGS["market"])
    for split, images in splits.items():
        if not images:
            raise UserError(
                f"the {split} split of {data_dir} would be empty (nothing left after skipping junk, "
                "single-image identities or bad names): check the dataset and --naming"
            )

    counts = {split: split_counts(images) for split, images in splits.items()}
    marker = {
        "prepared_by": WRITER,
        "naming": pattern.pattern,
        "data_dir": str(data_dir),
        "layout": layout,
        "splits": counts,
        "skipped": {"junk_train": notes["junk_train"], "bad_names": len(bad)},
        "single_image_ids": notes["single_image_ids"],
    }

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

    print(f"prepared {data_dir} -> {output_dir} ({layout} layout, naming {pattern.pattern!r})")
    print(format_table(counts))
    if notes["junk_train"]:
        print(f"note: left {notes['junk_train']} junk/distractor images (ids -1, 0000) out of training")
    if notes["single_image_ids"]:
        print(f"note: {notes['single_image_ids']} training identities have one image: in train, not in val")
    if bad:
        print(f"note: skipped {len(bad)} file name(s) that don't match the naming (--skip_bad_names)")
    files = ", ".join(f"{n:,} {kind.replace('_', ' ')}" for kind, n in marker["files"].items() if n)
    print(f"files: {files}; done in {time.perf_counter() - start:.2f} s")
    return marker


if __name__ == "__main__":
    run_main(main)
