"""How a dataset is named and read: file-name parsing, dataset.yaml, image listing and loading,
transforms, and the identity-balanced sampler.

- Naming: a person re-ID image file name encodes the person id and the camera, e.g. Market-1501's
  `0002_c1s1_000451_03.jpg` is person 2 seen by camera 1. `parse_name` reads both with one regular
  expression (a *naming*, with the named groups `pid` and `cam`); prepare.py, test.py, index.py and
  demo.py all use it, so labels and cameras can never disagree between scripts. prepare.py stores the
  naming it used in `dataset.yaml` next to the splits it writes, where `read_naming` finds it again.
- Own data (`image_labels`): a naming may leave out either group. Without `pid`, the id is the name
  of the folder holding the image (prepare.py's "one folder per identity" layout). Without `cam`, the
  dataset is camera-less: each image counts as seen by a camera of its own (`own_camera`), so the
  Market-1501 rule, unchanged, excludes only the query's own image and makes every other image of the
  same id a true match. Ids that are names (`alice_cam1_0001.jpg`) are numbered once, by prepare.py
  (`number_ids`), and the table is stored in dataset.yaml (`read_ids`).
- Images: `list_images` (one folder, or a folder and its subfolders), `load_image` (any file Pillow
  reads, as 8-bit RGB: 16-bit grey scaled, transparency laid over the mean colour, EXIF rotation
  applied), the train and test transforms, and two datasets for torch's DataLoader: `image_folder`
  (one class per identity folder, for training) and `ImageFiles` (a list of files).
- Sampling: `PKSampler`, the identity-balanced batches of metric learning (P identities x K images),
  and its options (`add_sampler_options`); the default is torch's plain random order.

This module imports torch and torchvision only inside the functions that need them, so prepare.py
starts fast.
"""

import hashlib
import os
import re
from pathlib import Path

from utils import UserError, load_yaml

# ----------------------------------------------------------------------------------------------------
# Naming: one parser for every dataset.

# Each pattern has the named groups `pid` (person id) and `cam` (camera); see image_labels for namings
# that leave one out.
NAMINGS = {
    # Market-1501 `0002_c1s1_000451_03.jpg` (-1 = junk, 0000 = distractor), DukeMTMC-reID
    # `0005_c2_f0046985.jpg`, CUHK03-NP `0001_c1_1.png`; any number of camera digits.
    "market": r"^(?P<pid>-?\d+)_c(?P<cam>\d+)",
    # MSMT17 `0000_000_01_0303morning_0015_0.jpg`: id (0000 is a real person), index, camera (01-15)...
    "msmt17": r"^(?P<pid>\d+)_\d+_(?P<cam>\d+)_",
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DATASET_FILE = "dataset.yaml"  # written by prepare.py next to the splits
GROUPS = ("pid", "cam")


def naming_pattern(naming: str | re.Pattern | None) -> re.Pattern:
    """Compile a naming: a key of NAMINGS, a regular expression or an already compiled pattern.

    The expression has the named groups `pid` and `cam`, or one of them (see image_labels), and no
    other named group; raise ValueError saying what is wrong. None, or "", is the naming of a
    camera-less dataset whose ids are folder names: the empty pattern.
    """
    if naming is None:
        return re.compile("")
    if isinstance(naming, re.Pattern):
        pattern = naming
    else:
        try:
            pattern = re.compile(NAMINGS.get(naming, naming))
        except re.error as err:
            raise ValueError(f"--naming {naming!r} is not a valid regular expression: {err}") from None
    other = sorted(set(pattern.groupindex) - set(GROUPS))
    if other or not (set(GROUPS) & set(pattern.groupindex) or pattern.pattern == ""):
        found = f"has the named group {other[0]!r}" if other else "has no named group pid or cam"
        raise ValueError(
            f"--naming {pattern.pattern!r} {found}: give one of {sorted(NAMINGS)} or a regular expression "
            "with the named groups (?P<pid>...) and (?P<cam>...) (or one of them; see the README)"
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


def own_camera(filename: str) -> int:
    """The camera of an image of a camera-less dataset: one of its own, a number from 1 to 2**48 made
    from its file name. The query's own image (the same file name under the same id) is then
    "same id, same camera", which the Market-1501 rule ignores; every other image of the id is a match."""
    digest = hashlib.blake2b(os.path.basename(filename).encode(), digest_size=6).digest()
    return 1 + int.from_bytes(digest, "big")


def id_text(path: str | Path, naming: str | re.Pattern | None = "market") -> str:
    """The person id of an image as written: the naming's `pid` group, or else its folder's name."""
    pattern = naming_pattern(naming)
    return _id_text(match_name(str(path), pattern), path)


def _id_text(match: re.Match, path: str | Path) -> str:
    return match["pid"] if "pid" in match.re.groupindex else Path(path).parent.name


def image_labels(
    path: str | Path, naming: str | re.Pattern | None = "market", ids: dict[str, int] | None = None
) -> tuple[int, int]:
    """Return (person id, camera) of an image file; raise ValueError if its name doesn't give them.

    The id is the naming's `pid` group, or, when the naming has none, the name of the folder holding
    the image; with `ids` (the table of a dataset whose ids are names, see number_ids) it is looked up
    there, else read as an integer. The camera is the `cam` group as an integer, or, when the naming
    has none, `own_camera` (camera-less).
    """
    pattern = naming_pattern(naming)
    name = os.path.basename(path)
    match = match_name(name, pattern)
    text = _id_text(match, path)
    if ids is not None and text not in ids:
        raise ValueError(
            f"{name}: id {text!r} is not in the table of ids of dataset.yaml; run prepare.py again"
        )
    pid = ids[text] if ids is not None else _integer(text)
    cam = own_camera(name) if "cam" not in pattern.groupindex else _integer(match["cam"])
    if pid is None or cam is None:
        shown = match["cam"] if "cam" in pattern.groupindex else None
        raise ValueError(
            f"{name}: the naming {pattern.pattern!r} reads pid {text!r} and cam {shown!r}, which must be "
            "integers (prepare.py numbers ids that are names)"
        )
    return pid, cam


def _integer(text) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def parse_name(filename: str, naming: str | re.Pattern = "market") -> tuple[int, int]:
    """Return (person id, camera) from an image file name; raise ValueError if it doesn't match.

    `naming` is a key of NAMINGS, a regular expression or a compiled pattern (see naming_pattern). It
    is searched in the base name, so anchor custom expressions with `^` to match from the start.
    The naming must have the `pid` group (see image_labels for ids given by folders).
    """
    pattern = naming_pattern(naming)
    if "pid" not in pattern.groupindex:
        raise ValueError(f"--naming {pattern.pattern!r} has no named group pid: the ids are folder names")
    return image_labels(os.path.basename(filename), pattern)


def number_ids(texts) -> dict[str, int] | None:
    """The table of ids of a dataset whose ids are names: each distinct text -> 1, 2, ... in sorted
    order. None when every id is an integer: those are the ids (Market-1501's -1 junk, 0 distractor)."""
    texts = sorted(set(texts))
    if all(_integer(text) is not None for text in texts):
        return None
    return {text: i for i, text in enumerate(texts, start=1)}


def read_naming(prepared_dir: str | Path) -> re.Pattern:
    """The naming prepare.py stored in `prepared_dir/dataset.yaml`; Market-1501's without that file."""
    dataset_file = Path(prepared_dir) / DATASET_FILE
    return naming_pattern(load_yaml(dataset_file)["naming"] if dataset_file.is_file() else "market")


def naming_option(value: str | None, option: str = "--naming") -> tuple[re.Pattern | None, dict | None]:
    """The naming and table of ids of an option that takes a NAMINGS key, a regular expression, or a
    folder prepared by prepare.py (or its dataset.yaml), whose naming and ids it uses. None: none."""
    if value is None:
        return None, None
    path = Path(value)
    if path.is_dir() or (path.name == DATASET_FILE and path.is_file()):
        folder = path if path.is_dir() else path.parent
        if not (folder / DATASET_FILE).is_file():
            raise UserError(
                f"{option} {value}: a folder without {DATASET_FILE}; give a folder prepare.py wrote"
            )
        return read_naming(folder), read_ids(folder)
    try:
        return naming_pattern(value), None
    except ValueError as err:
        raise UserError(str(err).replace("--naming", option, 1)) from None


def read_ids(prepared_dir: str | Path) -> dict[str, int] | None:
    """The table of ids prepare.py stored in `prepared_dir/dataset.yaml` (ids that are names), or None."""
    dataset_file = Path(prepared_dir) / DATASET_FILE
    return (load_yaml(dataset_file).get("ids") if dataset_file.is_file() else None) or None


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


def image_list(path: str | Path, option: str) -> list[Path]:
    """The images a script is given with `option`: an image file; a folder (every image below it,
    sorted, see list_images); or a text file listing image paths, one per line (relative paths are
    relative to the list's folder; blank lines and lines starting with # are skipped). A missing
    path, a listed file that is missing, or no image at all is a UserError naming `option`."""
    path = Path(path)
    if path.is_dir():
        images = list_images(path, recursive=True)
        if not images:
            raise UserError(f"{option} {path}: no images in this folder or below it")
        return images
    if not path.is_file():
        raise UserError(f"{option} {path}: no such image, folder or list of images")
    if is_image(path):
        return [path]
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{option} {path}: not an image, and not a readable list of images ({err})") from None
    images = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        image = path.parent / line  # an absolute line stays absolute
        if not image.is_file():
            raise UserError(f"{option} {path} line {number}: {image}: no such image; fix the list")
        images.append(image)
    if not images:
        raise UserError(f"{option} {path}: the list names no images")
    return images


def load_image(path: str | Path):
    """Open an image as 8-bit RGB; a file Pillow cannot read is a UserError naming it. See to_rgb."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return to_rgb(img)
    except Image.DecompressionBombError as err:  # more pixels than Pillow's safety limit
        raise UserError(f"{path}: too large to read safely ({err}); crop or shrink the image") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the image ({err}); replace or remove the file") from None


def to_rgb(img):
    """A PIL image of any mode as 8-bit RGB, upright.

    - EXIF orientation (photos from phones) is applied.
    - Grey images of more than 8 bits (16-bit PNG or TIFF: modes I;16, I;16B, I) are scaled from
      0..65535 to 0..255; Pillow alone clips them, so almost every pixel turns white.
    - Transparency (RGBA, LA, PA, or a palette or grey image with a transparent colour) is laid over
      the ImageNet mean colour, which normalisation turns into zeros (as padding would); dropping the
      alpha channel would show whatever colour the hidden pixels hold.
    - Palette, CMYK, YCbCr, 1-bit, float and the other modes: Pillow's conversion.
    """
    import numpy as np
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):  # I;16, I;16L, I;16B, I;16N, I (32-bit integers)
        grey = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257
        img = Image.fromarray(np.round(grey).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        mean = tuple(round(255 * m) for m in IMAGENET_MEAN)
        background = Image.new("RGBA", rgba.size, (*mean, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


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


# ----------------------------------------------------------------------------------------------------
# The identity-balanced sampler.


def add_sampler_options(parser) -> None:
    """--sampler and --num_instances: how train.py orders the training images into batches."""
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--sampler",
        default="random",
        choices=["random", "pk"],
        help="random: shuffled images; pk: batches of batchsize/K identities x K images each (PKSampler)",
    )
    group.add_argument("--num_instances", type=int, default=4, help="K, images per identity in a pk batch")


class PKSampler:
    """Identity-balanced batches for metric learning (Hermans et al., "In Defense of the Triplet Loss
    for Person Re-Identification", 2017): each batch holds P = batch_size / K identities with K images
    each. A batch sampler: iterating yields lists of dataset indices; use `DataLoader(batch_sampler=)`.

    An epoch: each identity with n images offers max(1, n // K) groups of K of its images (shuffled; an
    identity with fewer than K images offers one group drawn with replacement, and the n mod K images
    left over differ from epoch to epoch). The groups fill batches in rounds: in each round every
    identity with groups left offers its next one, the offers are shuffled, and whole batches of P are
    cut from them (the rest wait for the next round), so the identities of a batch are always distinct.
    When fewer than P identities have groups left, one last batch takes one group of each and is filled
    with groups drawn from other identities: every identity is in every epoch. There are
    ceil(groups / P) batches per epoch (short epochs are padded with extra batches of random
    identities), about as many images as the dataset holds.

    Distributed (num_replicas > 1): each epoch the identities are shuffled and cut into `num_replicas`
    shares (every num_replicas-th identity); each process samples only its share, and every process
    yields the same number of batches, ceil(all groups / (P x num_replicas)) (a share with more groups
    than that leaves its last ones out this epoch).

    The order depends only on `seed`, the epoch (`set_epoch`) and the rank, never on global random
    state, so a resumed run continues exactly. The work per epoch is a few vectorised tensor
    operations per round (no Python loop over images).
    """

    def __init__(self, labels, batch_size: int, num_instances: int, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0):  # fmt: skip
        import torch

        if batch_size % num_instances:
            raise ValueError(f"batch size {batch_size} is not a multiple of --num_instances {num_instances}")
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.k, self.p = num_instances, batch_size // num_instances
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0
        self.counts = torch.bincount(self.labels)  # images per identity
        self.ids = torch.nonzero(self.counts).flatten()  # identities present
        self.groups = (self.counts // self.k).clamp(min=1)  # groups of K per identity
        if len(self.ids) < self.p * num_replicas:
            raise ValueError(
                f"{len(self.ids)} identities, fewer than {self.p} per batch x {num_replicas} processes"
            )
        self.num_batches = -(-int(self.groups[self.ids].sum()) // (self.p * num_replicas))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def _generator(self, *salt: int):
        import torch

        return torch.Generator().manual_seed(hash((self.seed, self.epoch, *salt)) % 2**63)

    def share(self, rank: int):
        """The identities of process `rank` this epoch: every num_replicas-th of a shuffled order."""
        import torch

        return self.ids[torch.randperm(len(self.ids), generator=self._generator(-1))][
            rank :: self.num_replicas
        ]

    def identity_batches(self, ids):
        """(num_batches, P) identities and (num_batches, P) group numbers (-1: K images drawn with
        replacement) of one epoch of the identities `ids`."""
        import torch

        g = self._generator(self.rank)
        left = self.groups.clone()  # groups left per identity (indexed by label)
        used = torch.zeros_like(left)
        batch_ids, batch_groups, made = [], [], 0
        active = ids
        while len(active) >= self.p and made < self.num_batches:
            offers = active[torch.randperm(len(active), generator=g)]
            take = offers[: len(offers) // self.p * self.p]
            batch_ids.append(take.view(-1, self.p))
            made += len(take) // self.p
            batch_groups.append(used[take].view(-1, self.p))
            used[take] += 1
            left[take] -= 1
            active = active[left[active] > 0]
        ids_out = torch.cat(batch_ids) if batch_ids else torch.empty(0, self.p, dtype=torch.int64)
        groups_out = torch.cat(batch_groups) if batch_groups else torch.empty(0, self.p, dtype=torch.int64)
        if len(ids_out) < self.num_batches and len(active):  # the last identities, then random others
            others = ids[~torch.isin(ids, active)]
            fill = others[torch.randperm(len(others), generator=g)[: self.p - len(active)]]
            ids_out = torch.cat([ids_out, torch.cat([active, fill]).view(1, -1)])
            groups_out = torch.cat(
                [groups_out, torch.cat([used[active], torch.full_like(fill, -1)]).view(1, -1)]
            )
        while len(ids_out) < self.num_batches:  # pad a short epoch with random identities
            extra = ids[torch.randperm(len(ids), generator=g)[: self.p]]
            ids_out = torch.cat([ids_out, extra.view(1, -1)])
            groups_out = torch.cat([groups_out, torch.full((1, self.p), -1)])
        return ids_out[: self.num_batches], groups_out[: self.num_batches]

    def __iter__(self):
        import torch

        ids, groups = self.identity_batches(self.share(self.rank) if self.num_replicas > 1 else self.ids)
        g = self._generator(self.rank, 1)
        # The images of each identity in a random order, contiguous: sort by label + a random fraction.
        order = torch.argsort(
            self.labels.double() + torch.rand(len(self.labels), generator=g, dtype=torch.float64)
        )
        start = torch.cumsum(self.counts, 0) - self.counts  # first position of each identity in `order`
        n = self.counts[ids].unsqueeze(-1)  # (B, P, 1)
        offset = groups.unsqueeze(-1) * self.k + torch.arange(self.k)  # (B, P, K) the group's positions
        drawn = (torch.rand(*offset.shape, generator=g) * n).long()  # with replacement
        with_replacement = (groups.unsqueeze(-1) < 0) | (n < self.k)
        position = start[ids].unsqueeze(-1) + torch.where(with_replacement, drawn, offset)
        yield from order[position].view(len(ids), -1).tolist()
