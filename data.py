"""How a dataset is named and read: file-name parsing, dataset.yaml, image listing and loading, transforms.

- Naming: a person re-ID image file name encodes the person id and the camera, e.g. Market-1501's
  `0002_c1s1_000451_03.jpg` is person 2 seen by camera 1. `parse_name` reads both with one regular
  expression (a *naming*, with the named groups `pid` and `cam`); prepare.py, test.py and demo.py all
  use it, so labels and cameras can never disagree between scripts. prepare.py stores the naming it
  used in `dataset.yaml` next to the splits it writes, where `read_naming` finds it again.
- Images: `list_images` (one folder, or a folder and its subfolders), `load_image` (any file Pillow
  reads, as RGB), the train and test transforms, and two datasets for torch's DataLoader:
  `image_folder` (one class per identity folder, for training) and `ImageFiles` (a list of files).

This module imports torch and torchvision only inside the functions that need them, so prepare.py
starts fast.
"""

import os
import re
from pathlib import Path

from utils import UserError, load_yaml

# ----------------------------------------------------------------------------------------------------
# Naming: one parser for every dataset.

# Each pattern has the named groups `pid` (person id) and `cam` (camera), read as integers.
NAMINGS = {
    # Market-1501 `0002_c1s1_000451_03.jpg` (-1 = junk, 0000 = distractor), DukeMTMC-reID
    # `0005_c2_f0046985.jpg`, CUHK03-NP `0001_c1_1.png`; any number of camera digits.
    "market": r"^(?P<pid>-?\d+)_c(?P<cam>\d+)",
    # MSMT17 `0000_000_01_0303morning_0015_0.jpg`: id (0000 is a real person), index, camera (01-15)...
    "msmt17": r"^(?P<pid>\d+)_\d+_(?P<cam>\d+)_",
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DATASET_FILE = "dataset.yaml"  # written by prepare.py next to the splits


def naming_pattern(naming: str | re.Pattern) -> re.Pattern:
    """Compile a naming: a key of NAMINGS, a regular expression or an already compiled pattern.

    The expression must have the named groups `pid` and `cam`; raise ValueError saying what is wrong
    for an invalid expression or a missing group.
    """
    if isinstance(naming, re.Pattern):
        pattern = naming
    else:
        try:
            pattern = re.compile(NAMINGS.get(naming, naming))
        except re.error as err:
            raise ValueError(f"--naming {naming!r} is not a valid regular expression: {err}") from None
    missing = [group for group in ("pid", "cam") if group not in pattern.groupindex]
    if missing:
        raise ValueError(
            f"--naming {pattern.pattern!r} has no named group {' or '.join(missing)}: give one of "
            f"{sorted(NAMINGS)} or a regular expression with the named groups (?P<pid>...) and (?P<cam>...)"
        )
    return pattern


def match_name(filename: str, naming: str | re.Pattern = "market") -> re.Match:
    """Search the naming in the base name of `filename`; raise ValueError if it doesn't match.

    The groups keep the text of the name (`match["pid"]` is "0002"); parse_name reads them as integers.
    """
    pattern = naming_pattern(naming)
    name = os.path.basename(filename)
    match = pattern.search(name)
    if match is None:
        raise ValueError(f"{name}: name does not match the naming {pattern.pattern!r}")
    return match


def parse_name(filename: str, naming: str | re.Pattern = "market") -> tuple[int, int]:
    """Return (person id, camera) from an image file name; raise ValueError if it doesn't match.

    `naming` is a key of NAMINGS, a regular expression or a compiled pattern (see naming_pattern). It
    is searched in the base name, so anchor custom expressions with `^` to match from the start.
    """
    match = match_name(filename, naming)
    try:
        return int(match["pid"]), int(match["cam"])
    except (TypeError, ValueError):
        raise ValueError(
            f"{os.path.basename(filename)}: the naming {match.re.pattern!r} reads pid {match['pid']!r} "
            f"and cam {match['cam']!r}, which must be integers"
        ) from None


def read_naming(prepared_dir: str | Path) -> re.Pattern:
    """The naming prepare.py stored in `prepared_dir/dataset.yaml`; Market-1501's without that file."""
    dataset_file = Path(prepared_dir) / DATASET_FILE
    return naming_pattern(load_yaml(dataset_file)["naming"] if dataset_file.is_file() else "market")


# ----------------------------------------------------------------------------------------------------
# Images.


def is_image(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The image files in `folder` (and its subfolders, following links, when `recursive`).

    Hidden files and other files are left out. Sorted by the path below `folder`, part by part, so a
    prepared split (one folder per identity) lists in torchvision ImageFolder's order.
    """
    folder = Path(folder)
    if not recursive:
        with os.scandir(folder) as entries:
            names = [
                e.name for e in entries if is_image(e.name) and not e.name.startswith(".") and e.is_file()
            ]
        return [folder / name for name in sorted(names)]
    found = []
    for root, _, files in os.walk(folder, followlinks=True):
        found += [Path(root, name) for name in files if is_image(name) and not name.startswith(".")]
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def load_image(path: str | Path):
    """Open an image as RGB; a file Pillow cannot read is a UserError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Image.DecompressionBombError as err:  # more pixels than Pillow's safety limit
        raise UserError(f"{path}: too large to read safely ({err}); crop or shrink the image") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the image ({err}); replace or remove the file") from None


# ----------------------------------------------------------------------------------------------------
# Transforms and datasets.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def test_transform(height: int, width: int, normalize: bool = True):
    """Bicubic resize to (height, width), to tensor (RGB in [0, 1]), ImageNet normalisation (`normalize`)."""
    from torchvision import transforms

    steps = [
        transforms.Resize((height, width), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
    ]
    if normalize:
        steps.append(transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return transforms.Compose(steps)


def train_transform(height: int, width: int, erasing_p: float = 0.0, color_jitter: bool = False):
    """The classic baseline's augmentation: bicubic resize, pad 10, random crop, flip, [colour
    jitter], ImageNet normalisation, then random erasing with probability `erasing_p`."""
    from torchvision import transforms

    from random_erasing import RandomErasing

    steps = [
        transforms.Resize((height, width), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.Pad(10),
        transforms.RandomCrop((height, width)),
        transforms.RandomHorizontalFlip(),
    ]
    if color_jitter:
        steps.append(transforms.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0))
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if erasing_p > 0:
        steps.append(RandomErasing(p=erasing_p))
    return transforms.Compose(steps)


def image_folder(root: Path, transform):
    """torchvision's ImageFolder over a prepared split (class = identity folder), read by load_image."""
    from torchvision import datasets

    if not root.is_dir():
        raise UserError(f"{root}: no such folder; run prepare.py first or pass --data_dir")
    try:
        return datasets.ImageFolder(str(root), transform=transform, loader=load_image)
    except FileNotFoundError as err:  # ImageFolder's message for an empty folder
        raise UserError(f"{root}: no images in it ({err}); run prepare.py again") from None


class ImageFiles:
    """The transformed images of a list of files, in order: a map-style dataset for DataLoader."""

    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(load_image(self.paths[i]))
