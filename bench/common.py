"""Shared pieces of the benchmark scripts: a prepared synthetic dataset and child-process runs.

Each measurement runs in its own child process, so its peak memory (ru_maxrss) is its own and
nothing one measurement allocates slows the next.
"""

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepared_synthetic(root: Path, num_ids: int = 200, seed: int = 0) -> Path:
    """Generate the synthetic dataset under `root` and prepare it; return the prepared folder."""
    import prepare
    import synthetic

    raw = root / "raw"
    synthetic.generate(raw, num_ids=num_ids, seed=seed)
    prepare.main(["--data_dir", str(raw), "--output_dir", str(root / "pytorch")])
    return root / "pytorch"


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


def machine() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
