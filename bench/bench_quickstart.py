"""The synthetic main job: quickstart.sh's commands, each one timed, and the numbers they end with.

Reads the `$PY ...` commands from quickstart.sh itself, so this benchmark cannot drift from the
script, and runs each as a child `python SCRIPT ...` (import costs included, as in the script) in a
temporary folder, where the scripts write data/, model/, results/ and pytorch_result.mat. It prints
the wall time of each step and their sum, which is quickstart.sh's "done in N s" (everything after
its package check), then what the evaluate steps printed, the command and the machine. The metrics
repeat exactly on the same machine with the same number of threads.

    python bench/bench_quickstart.py
    python bench/bench_quickstart.py --keep /tmp/quickstart_run    # keep the data, model and pictures
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, machine, shell_commands, work_folder  # common puts the repository on sys.path
from utils import UserError, run_main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="run in DIR (new or empty) and keep it, instead of a temporary folder"
    )
    return parser.parse_args(argv)


def run_steps(work: Path) -> list[tuple[str, float]]:
    """Run quickstart.sh's commands in `work`; return (command, seconds) per step. The output of
    the evaluate steps is printed after the timings, as they print it."""
    steps, printed = [], []
    for argv in shell_commands((ROOT / "quickstart.sh").read_text(), "$PY "):
        command = " ".join(argv)
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, str(ROOT / argv[0]), *argv[1:]],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            raise UserError(f"quickstart step failed (its error output is above): {command}")
        steps.append((command, time.perf_counter() - start))
        print(f"{steps[-1][1]:7.1f} s  {command}", flush=True)
        if argv[0].startswith("evaluate"):
            printed.append(f"\n$ python {command}\n{result.stdout.rstrip()}")
    print(
        f"{sum(seconds for _, seconds in steps):7.1f} s  in all (what quickstart.sh reports as 'done in N s')"
    )
    print("\n".join(printed))
    return steps


def main(argv=None) -> list[tuple[str, float]]:
    args = parse_args(argv)
    print(f"$ python bench/bench_quickstart.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    with work_folder(args.keep, "bench_quickstart-") as work:
        steps = run_steps(work)
    print(f"\nmachine: {machine()}")
    if args.keep:
        print(f"kept: {Path(args.keep).resolve()}")
    return steps


if __name__ == "__main__":
    run_main(main)
