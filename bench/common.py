"""Shared pieces of the benchmark scripts: a prepared synthetic dataset and child-process runs.

Each measurement runs in its own child process, so its peak memory (ru_maxrss) is its own and
nothing one measurement allocates slows the next.
"""

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))  # synthetic.py


@contextmanager
def work_folder(keep: str | None, prefix: str):
    """The folder a benchmark runs in: `keep` (--keep DIR: new or empty, kept afterwards) or, when it
    is None, a new temporary folder, removed afterwards."""
    from utils import UserError

    if keep is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)
        return
    work = Path(keep).resolve()
    if work.exists() and (not work.is_dir() or any(work.iterdir())):
        raise UserError(f"--keep {work}: not an empty folder; give a new or empty one")
    work.mkdir(parents=True, exist_ok=True)
    yield work


def prepared_synthetic(root: Path, num_ids: int = 200, seed: int = 0) -> Path:
    """Generate the synthetic dataset under `root` and prepare it; return the prepared folder."""
    import prepare
    import synthetic

    raw = root / "raw"
    synthetic.generate(raw, num_ids=num_ids, seed=seed)
    prepare.main(["--data_dir", str(raw), "--output_dir", str(root / "pytorch")])
    return root / "pytorch"


def shell_commands(text: str, prefix: str) -> list[list[str]]:
    """The `prefix`-started commands of a shell text (`prefix` dropped), continuation lines joined,
    comments dropped: how the tests and bench_quickstart.py read quickstart.sh and the README."""
    joined = text.replace("\\\n", " ")
    return [shlex.split(line, comments=True)[1:] for line in joined.splitlines() if line.startswith(prefix)]


def run_child(argv: list[str], cwd: Path | None = None) -> dict:
    """Run `python argv...` whose last stdout line is a JSON object (see `report`)."""
    result = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(**values) -> None:
    """A child's result: `values` and its own peak memory, as the last line of stdout."""
    values["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(values), flush=True)


def conditions() -> str:
    """The CPU, its cores and the load average (no torch import: the evaluate benchmarks stay light)."""
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} x {cpu}; load average (1, 5, 15 min) {load}"


def machine() -> str:
    import torch

    return f"{conditions()}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def side_by_side_parser(doc: str, batchsize: int, ours: str) -> argparse.ArgumentParser:
    """The options of a benchmark comparing a toolkit script (child `ours`) with the bare model."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batchsize", type=int, default=batchsize)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--num_ids", type=int, default=100, help="synthetic identities (half for training)")
    parser.add_argument("--child", choices=["bare", ours], help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    return parser


def side_by_side(script: str, args, bare_args: list[str], ours: str, describe, ours_args=()) -> None:
    """For each precision, run the bare model and the toolkit script as children, one line each;
    `bare_args` and `ours_args` go to one child each."""
    print(f"$ python bench/{Path(script).name} {shlex.join(sys.argv[1:])}")
    print(f"machine: {machine()}")
    shape = ["--backbone", args.backbone, "--batchsize", str(args.batchsize), "--height", str(args.height),
             "--width", str(args.width)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        data = prepared_synthetic(Path(tmp), num_ids=args.num_ids)
        for precision in args.precisions.split(","):
            child = [str(Path(script).resolve()), *shape, "--precision", precision]
            bare = run_child([*child, "--child", "bare", *bare_args])
            result = run_child([*child, "--child", ours, "--data", str(data), *ours_args], cwd=tmp)
            print(f"{args.backbone} {args.height}x{args.width} batch {args.batchsize} {precision}: "
                  f"{describe(bare, result)} | ratio {result['img_s'] / bare['img_s']:.2f}")  # fmt: skip
