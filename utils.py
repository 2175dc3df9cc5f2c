"""Small helpers shared by the scripts: file-name parsing, option groups, run setup, safe writes.

This module imports only the standard library and PyYAML at import time, so that prepare.py and the
evaluate scripts start fast; the helpers that need torch import it inside the function.
"""

import argparse
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

# ----------------------------------------------------------------------------------------------------
# Dataset naming: one parser, used by prepare.py, test.py and demo.py.

# Each pattern has the named groups `pid` (person id) and `cam` (camera), read as integers.
NAMINGS = {
    # Market-1501 `0002_c1s1_000451_03.jpg` (-1 = junk, 0000 = distractor), DukeMTMC-reID
    # `0005_c2_f0046985.jpg`, CUHK03-NP `0001_c1_1.png`; any number of camera digits.
    "market": r"^(?P<pid>-?\d+)_c(?P<cam>\d+)",
    # MSMT17 `0000_000_01_0303morning_0015_0.jpg`: id (0000 is a real person), index, camera (01-15)...
    "msmt17": r"^(?P<pid>\d+)_\d+_(?P<cam>\d+)_",
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


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


def is_image(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


# ----------------------------------------------------------------------------------------------------
# Files: YAML and atomic writes (write to a temporary name in the same folder, then rename).


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)` and move the result to `path`, so `path` is never left truncated."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def replace_folder(out: Path, build) -> None:
    """Call `build(tmp)` on an empty folder next to `out`, then swap it in place of `out`.

    `out` must be absent, empty, or a folder the caller has checked is its own: its old contents
    are deleted only once the new tree is complete, so an interrupted run never leaves a half tree.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the tree should be readable as usual
    try:
        build(tmp)
        if out.is_dir() and any(out.iterdir()):
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, trash / out.name)
            try:
                os.rename(tmp, out)
            except OSError:
                os.rename(trash / out.name, out)  # put the old tree back
                trash.rmdir()
                raise
            shutil.rmtree(trash)  # unlinks links only: the files they point to are untouched
        else:
            if out.is_dir():
                out.rmdir()
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_yaml(path: str | Path, data: dict) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)

    atomic_write(path, write)


def load_yaml(path: str | Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def torch_save(obj, path: str | Path) -> None:
    """torch.save, atomically."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


# ----------------------------------------------------------------------------------------------------
# Run setup.


class UserError(Exception):
    """Bad input from the user: main() prints the message as one line and exits with status 2."""


def run_main(main_fn, argv=None) -> None:
    """Run a script's `main`, turning a UserError into a one-line message and exit status 2."""
    try:
        main_fn(argv)
    except UserError as err:
        # Raised in a DataLoader worker, the error arrives wrapped with the original message last.
        message = str(err).strip().splitlines()[-1].removeprefix("utils.UserError: ")
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def setup_logging(log_file: str | Path | None = None) -> logging.Logger:
    """Log to the console, and to `log_file` when given."""
    logger = logging.getLogger("reid")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


def set_seed(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(gpu_ids: str, logger: logging.Logger | None = None):
    """Return the torch.device for `--gpu_ids` ("0", "0,1", "-1" = CPU).

    Without CUDA the run goes to the CPU with a one-line warning. Under torchrun each process uses
    the GPU of its LOCAL_RANK.
    """
    import torch

    ids = [int(i) for i in str(gpu_ids).split(",") if i.strip() != ""]
    if not ids or ids[0] < 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if logger is not None:
            logger.warning("warning: CUDA is not available, running on the CPU (--gpu_ids -1 hides this)")
        return torch.device("cpu")
    if "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if len(ids) > 1 and logger is not None:
        logger.warning(
            f"warning: --gpu_ids {gpu_ids} runs on GPU {ids[0]} only; for several GPUs start the script "
            "with torchrun --nproc_per_node=N (see the README)"
        )
    return torch.device("cuda", ids[0])


def run_precision(args, device, logger: logging.Logger | None = None):
    """The autocast dtype for `--fp16`/`--bf16` on `device`, or None for float32.

    float16 autocast is a CUDA feature here; on a CPU `--fp16` runs in bfloat16 and says so.
    """
    import torch

    if not (getattr(args, "bf16", False) or getattr(args, "fp16", False)):
        return None
    if getattr(args, "fp16", False) and device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and logger is not None:
        if getattr(args, "fp16", False):
            logger.warning("warning: --fp16 on the CPU runs in bfloat16 (float16 autocast is a GPU feature)")
        if not cpu_has_bfloat16():
            logger.warning(
                "warning: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): bfloat16 runs "
                "slower than float32 here; drop --bf16/--fp16"
            )
    return torch.bfloat16


def cpu_has_bfloat16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX), as torch detects it."""
    import torch

    checks = [
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    return any(check() for check in checks if check is not None)


def autocast(device, dtype):
    """The mixed-precision context: torch.autocast for `dtype`, or a null context for float32."""
    import contextlib

    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# Option groups shared by the scripts (each script adds the groups it needs).


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows the module docstring as written and every option's default."""


def add_model_args(parser) -> None:
    """Which trained model to load: test.py and demo.py."""
    group = parser.add_argument_group("trained model")
    group.add_argument("--name", default="ft_ResNet50", help="trained model in model/NAME")
    group.add_argument("--which_epoch", default="last", help="checkpoint: an epoch number (e.g. 59) or last")


def add_device_args(parser, model: bool = True) -> None:
    """--gpu_ids, and for scripts that run a model (`model`) precision, workers and progress bars."""
    group = parser.add_argument_group("device and precision")
    group.add_argument("--gpu_ids", default="0", help="GPU ids, e.g. 0 or 0,1; -1 for the CPU")
    if not model:
        return
    precision = group.add_mutually_exclusive_group()
    precision.add_argument(
        "--fp16", action="store_true", help="float16 mixed precision on CUDA (bfloat16 on a CPU)"
    )
    precision.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (CUDA or CPU)")
    group.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="DataLoader worker processes; None: 4 on CUDA, 0 on the CPU (where the model is the bottleneck)",
    )
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stdout.isatty(),
        help="show progress bars (on by default when the output is a terminal)",
    )


def num_workers(args, device) -> int:
    if args.num_workers is not None:
        return args.num_workers
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


# ----------------------------------------------------------------------------------------------------
# Images: the loader and the test-time transform shared by train.py, test.py and demo.py.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: str):
    """Open an image as RGB; a file Pillow cannot read is a UserError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as err:
        raise UserError(f"{path}: cannot read the image ({err}); replace or remove the file") from None


def test_transform(height: int, width: int):
    """Bicubic resize to (height, width), to tensor, ImageNet normalisation."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize((height, width), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
