"""Time evaluate.py against the per-query baseline on a Market-1501-sized features file.

Each script runs as a child process (so the wall time includes the interpreter start and the file
read), `--repeat` times, interleaved; the report gives the best wall time, the CPU time of that run,
the peak resident memory of the child (ru_maxrss, from os.wait4), the commands and their output.

    python bench/bench_evaluate.py --repeat 5
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import conditions


def run(cmd: list[str]) -> dict:
    """Run `cmd`; its wall time, CPU time (user + sys), peak RSS in MB and output."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "out": text,
    }


def measure(commands: dict, repeat: int) -> dict:
    """Run each command `repeat` times, interleaved; keep each one's best wall time and highest RSS."""
    best = {}
    for _ in range(repeat):
        for name, cmd in commands.items():
            result = run(cmd)
            peak = max(result["rss_mb"], best[name]["rss_mb"]) if name in best else result["rss_mb"]
            if name not in best or result["wall"] < best[name]["wall"]:
                best[name] = result
            best[name]["rss_mb"] = peak
    return best


def compare(commands: dict, repeat: int) -> dict:
    """Print this benchmark's command line and the machine, measure `commands`, then print each
    command, its output and its figures; return the best run of each (see `measure`)."""
    print(f"$ python {' '.join(sys.argv)}")
    print(f"machine: {conditions()}\n")
    best = measure(commands, repeat)
    for name, cmd in commands.items():
        b = best[name]
        print(f"$ {' '.join(cmd)}")
        print(b["out"].rstrip())
        print(
            f"-> {name}: best wall {b['wall']:.2f} s of {repeat} (CPU {b['cpu']:.2f} s), "
            f"peak RSS {b['rss_mb']:.0f} MB\n"
        )
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--result_file", help="features file to evaluate (default: a new Market-sized one)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each script; the best is kept")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.result_file
        if path is None:
            path = str(Path(tmp) / "market.mat")
            subprocess.run([sys.executable, "bench/make_features.py", "--output", path], cwd=ROOT, check=True)
        commands = {
            "evaluate.py": [sys.executable, "evaluate.py", "--result_file", path],
            "baseline": [sys.executable, "bench/baseline_evaluate.py", "--result_file", path],
        }
        best = compare(commands, args.repeat)

    def results(out: str) -> list[str]:  # the result block: without evaluate.py's provenance line
        return [line for line in out.splitlines() if ": written by " not in line]

    same = results(best["evaluate.py"]["out"]) == results(best["baseline"]["out"])
    print(f"identical results: {'yes' if same else 'NO'}")
    fast, slow = best["evaluate.py"], best["baseline"]
    print(
        f"speed-up of evaluate.py over the per-query baseline: {slow['wall'] / fast['wall']:.1f}x wall, "
        f"{slow['cpu'] / fast['cpu']:.1f}x CPU"
    )
    print(f"after: {conditions()}")


if __name__ == "__main__":
    main()
