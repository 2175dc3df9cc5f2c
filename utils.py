"""Run setup shared by the scripts: one-line errors, logging, seed, device, mixed precision, safe writes.

This module imports only the standard library and PyYAML at import time, so that prepare.py and the
evaluate scripts start fast; the helpers that need torch import it inside the function.
"""

import argparse
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

# ----------------------------------------------------------------------------------------------------
# Errors and logging.


class UserError(Exception):
    """Bad input from the user: main() prints the message as one line and exits with status 2."""


def run_main(main_fn, argv=None) -> None:
    """Run a script's `main`, turning a UserError into a one-line message and exit status 2, and
    Ctrl-C into one line (what was interrupted, and how to continue when there is a way) and 130."""
    try:
        main_fn(argv)
    except UserError as err:
        # Raised in a DataLoader worker, the error arrives wrapped with the original message last.
        message = str(err).strip().splitlines()[-1].removeprefix("utils.UserError: ")
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:
        print(f"interrupted{f': {err}' if str(err) else ''}", file=sys.stderr)
        sys.exit(130)


# Option types: argparse calls them on the text of an option and prints a one-line error naming the
# option when they raise.


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def fraction(text: str) -> float:
    """A probability that must leave something: 0 <= p < 1 (a dropout of 1 would drop everything)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 0 and below 1")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value} must be between 0 and 1")
    return value


def gpu_ids(text: str) -> str:
    """Comma-separated GPU ids, e.g. 0 or 0,1; -1 for the CPU."""
    try:
        [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give GPU ids such as 0 or 0,1, or -1 for the CPU"
        ) from None
    return text


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows the module docstring as written and every option's default."""


def at_least_one(text: str) -> int:
    """argparse type of a count that must be 1 or more (--top_k, --batchsize)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give at least 1")
    return value


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


# ----------------------------------------------------------------------------------------------------
# Device and precision.


def add_device_args(parser, model: bool = True) -> None:
    """--gpu_ids, and for scripts that run a model (`model`) precision, workers and progress bars."""
    group = parser.add_argument_group("device and precision")
    group.add_argument("--gpu_ids", type=gpu_ids, default="0", help="GPU ids, e.g. 0 or 0,1; -1 for the CPU")
    if not model:
        return
    precision = group.add_mutually_exclusive_group()
    precision.add_argument(
        "--fp16", action="store_true", help="float16 mixed precision on CUDA (bfloat16 on a CPU)"
    )
    precision.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (CUDA or CPU)")
    group.add_argument(
        "--num_workers",
        type=non_negative_int,
        default=None,
        help="DataLoader worker processes; None: 4 on CUDA, 0 on the CPU (where the model is the bottleneck)",
    )
    group.add_argument("--workers", dest="num_workers", type=int, help="= --num_workers (classic name)")
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stdout.isatty(),
        help="show progress bars (on by default when the output is a terminal)",
    )


def select_device(gpu_ids: str, logger: logging.Logger | None = None):
    """Return the torch.device for `--gpu_ids` ("0", "0,1", "-1" = CPU).

    Without CUDA the run goes to the CPU with a one-line warning. Under torchrun each process uses
    the GPU of its LOCAL_RANK. A run on the CPU keeps its freed memory for reuse (keep_freed_memory).
    """
    import torch

    ids = [int(i) for i in str(gpu_ids).split(",") if i.strip() != ""]
    if not ids or ids[0] < 0:
        keep_freed_memory()
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if logger is not None:
            logger.warning("warning: CUDA is not available, running on the CPU (--gpu_ids -1 hides this)")
        keep_freed_memory()
        return torch.device("cpu")
    if "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if len(ids) > 1 and logger is not None:
        logger.warning(
            f"warning: --gpu_ids {gpu_ids} runs on GPU {ids[0]} only; for several GPUs start the script "
            "with torchrun --nproc_per_node=N (see the README)"
        )
    return torch.device("cuda", ids[0])


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed memory for reuse instead of returning it to the system.

    By default glibc gives every freed block above 128 KiB (most activations) back at once, and the
    next batch faults the pages in again: on a CPU, time spent in the kernel. The same settings as the
    environment variables MALLOC_MMAP_THRESHOLD_=32 MiB (the largest glibc takes) and
    MALLOC_TRIM_THRESHOLD_=1 GiB; bench/bench_cpu.py measures what they pay. Returns whether it could
    (False where the C library is not glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def num_workers(args, device) -> int:
    if args.num_workers is not None:
        return args.num_workers
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


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


def precision_name(dtype) -> str:
    """ "float32" for None (no autocast), else the autocast dtype's name, e.g. "bfloat16"."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def autocast(device, dtype):
    """The mixed-precision context: torch.autocast for `dtype`, or a null context for float32."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# Files: YAML, atomic writes (write to a temporary name in the same folder, then rename), and the one
# rule for replacing an output folder.


WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full: free some space",
    errno.EDQUOT: "the disk quota is used up: free some space",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
}


def write_error(path: str | Path, err: OSError) -> UserError:
    """A UserError that names the file that could not be written, why, and what to do."""
    reason = WRITE_ERRORS.get(err.errno, f"{err.strerror or err}; check the folder")
    return UserError(f"cannot write {path}: {reason}")


def check_writable(path: str | Path) -> None:
    """Fail now, before any long work, when the file `path` could not be written (its folder is
    created if needed): a UserError from write_error."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise write_error(path, err) from None


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)` and move the result to `path`, so `path` is never left truncated.

    The file gets the usual mode for a new file (0666 minus the umask). A full or read-only disk is
    a UserError naming `path` (write_error).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes the file private
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError):
            raise write_error(path, err) from None
        raise


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_yaml(path: str | Path, data: dict) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)

    atomic_write(path, write)


def load_yaml(path: str | Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def torch_save(obj, path: str | Path) -> None:
    """torch.save, atomically. The bytes are made in memory and written by Python, so a full disk is
    reported as such (torch's own writer says only "unexpected pos")."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


def is_marked(folder: Path, marker: str, first_line: str) -> bool:
    """Whether `folder/marker` is a file whose first line is `first_line`: the mark a script leaves in
    the folders it writes (prepare.py's dataset.yaml, synthetic.py's SYNTHETIC.txt)."""
    try:
        with open(Path(folder) / marker) as f:
            return f.readline().rstrip("\n") == first_line
    except (OSError, UnicodeDecodeError):
        return False


def check_replaceable(folder: Path, marker: str, first_line: str, writer: str, option: str) -> None:
    """Refuse `folder` as an output to be replaced as a whole unless it is absent, empty, or marked
    (see is_marked) as written by `writer`, the same script; the UserError names `option`."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder} is a file, not a folder: pass another {option}")
    if folder.is_dir() and any(folder.iterdir()) and not is_marked(folder, marker, first_line):
        raise UserError(
            f"{option} {folder} exists, is not empty and was not written by {writer} (no {marker} "
            f"marker): empty it or pass another {option}"
        )


def replace_folder(out: Path, build) -> None:
    """Call `build(tmp)` on an empty folder next to `out`, then swap it in place of `out`.

    `out` must be absent, empty, or a folder the caller has checked is its own (check_replaceable):
    its old contents are deleted only once the new tree is complete, so an interrupted run never
    leaves a half tree.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private; the tree should be readable as usual
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
