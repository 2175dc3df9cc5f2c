"""Time evaluate_rerank.py (k-reciprocal re-ranking + the metric) at Market-1501 or MSMT17 size.

Runs `evaluate_rerank.py` as a child process on a random features file of the chosen size and reports
the best whole-process wall time, its CPU time and the child's peak resident memory (ru_maxrss), with
evaluate.py (the same file, no re-ranking) alongside, so the re-ranking's share can be read off.

    python bench/bench_rerank.py --size market --repeat 3
    python bench/bench_rerank.py --size msmt17 --repeat 1
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_evaluate import ROOT, compare
from common import conditions

TARGETS = {"market": "at most 10 s and 2 GB", "msmt17": "within the machine's 24 GB"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(TARGETS), default="market", help="the benchmark to imitate")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each script; the best is kept")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{args.size}.mat")
        make = [sys.executable, "bench/make_features.py", "--size", args.size, "--output", path]
        subprocess.run(make, cwd=ROOT, check=True)
        commands = {
            "evaluate_rerank.py": [sys.executable, "evaluate_rerank.py", "--result_file", path],
            "evaluate.py": [sys.executable, "evaluate.py", "--result_file", path],
        }
        compare(commands, args.repeat)
    print(f"target for {args.size}: {TARGETS[args.size]}")
    print(f"after: {conditions()}")


if __name__ == "__main__":
    main()
