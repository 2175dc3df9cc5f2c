"""Does the calibrated "no match" threshold hold on people it was not calibrated on?

For one dataset and a model trained briefly on its training identities:
1. test.py extracts the features of a test set of people the model was not trained on (queries and
   gallery); random-noise images the size of the dataset's (--noise of them) are extracted with the
   same model.
2. The test identities are halved at random, --splits times (seeded; gallery.held_out_check, which
   calibrate.py runs too): a calibration half A and a held-out half B, each with its own queries and
   gallery images; distractors (id 0), junk (-1) and gallery identities without a query are shared out
   at random, so both galleries are about the same size (the false-match rate depends on it).
3. calibrate.py's rule on A (gallery.calibrate): the threshold for --false_match_rate.
4. On B, at that threshold: the false-match rate of B's queries with their identity removed from B's
   gallery (people who are absent), the true-match rate (a true match first, within the threshold)
   and the share of present people answered "match"; and the share of the noise images answered
   "match" by gallery.search (as search.py does) against B's gallery, and against its people only
   (without the distractor and junk crops, which are mostly background).
5. For contrast, the threshold demo.py --plot_distances used to suggest: the one that accepts 1% of the
   false query-gallery *pairs* of A, and the false-match rates it gives on B and on noise.

It prints the whole test set's table (what calibrate.py prints), one line per split, a summary (mean,
min and max over the splits; how many land within 2 points of the target), the command and machine.

Datasets:
- `synthetic`: quickstart.sh's own data and training command (tools/synthetic.py seed 0, ResNet-18
  from scratch, 9 epochs, 128x64). The test set: the same synthetic world (seed 0, so the same
  cameras) grown by 2 x --test_ids people, of whom about --test_ids are test identities; only the
  people the quickstart's data does not hold are kept (ids above its largest), with the distractors
  and junk. A 1% rate rests on a few look-alikes: with the quickstart's own 100 test identities, 50
  per half, it cannot be pinned (see the README).
- `cuhk01`: ../shared/data/cuhk01 in Market-1501 layout (486 test identities): MobileNetV2 from the
  shared ImageNet weights, fine-tuned for --epochs with bench_real.py's settings; skipped with one line
  when the data or the weights are absent.

    python bench/bench_threshold.py --dataset synthetic
    python bench/bench_threshold.py --dataset cuhk01 --epochs 8
"""

import argparse
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

# The toolkit and tools/, before bench_real imports them (common would, but it sorts after bench_real).
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tools")]
import prepare
import synthetic
import test
import train
from bench_real import COMMON_ARGS, DATA_DIR, MODELS, WEIGHTS, working_dir
from common import ROOT, machine, shell_commands, work_folder  # common puts the repository on sys.path
from features import load_features, load_for_extraction
from gallery import features_best_distances, held_out_check, rates_at, roc_table, search, threshold_at
from metrics import euclidean, feature_distance_chunks, protocol_masks
from utils import HelpFormatter, run_main, setup_logging

STEPS = {
    "tools/synthetic.py": synthetic.main,
    "prepare.py": prepare.main,
    "train.py": train.main,
    "test.py": test.main,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--dataset", choices=["synthetic", "cuhk01"], default="synthetic")
    parser.add_argument("--epochs", type=int, default=8, help="cuhk01: MobileNetV2 fine-tuning epochs")
    parser.add_argument("--test_ids", type=int, default=500, help="synthetic: identities of the test set")
    parser.add_argument("--splits", type=int, default=20, help="random halvings of the test identities")
    parser.add_argument("--false_match_rate", type=float, default=0.01, help="the target")
    parser.add_argument(
        "--noise", type=int, default=200, help="random-noise images searched as absent people"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the halvings and the noise")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (new or empty) and keep it")
    return parser.parse_args(argv)


def timed(name: str, fn, argv: list[str]) -> None:
    start = time.perf_counter()
    fn(argv)
    print(f"{time.perf_counter() - start:7.1f} s  {name} {shlex.join(argv)}", flush=True)


def train_synthetic(test_ids: int) -> tuple[str, str, int]:
    """quickstart.sh's first three commands (data, prepare, train); then the same synthetic world
    (seed 0: the same cameras) with --num_ids grown by 2 * `test_ids` people, and test.py on it.
    Returns the model, the prepared test set and the largest id of the quickstart's data: the ids above
    it are people the model has never seen."""
    commands = shell_commands((ROOT / "quickstart.sh").read_text(), "$PY ")[:3]
    for argv in commands:
        timed(argv[0], STEPS[argv[0]], argv[1:] + (["--no-progress"] if argv[0] == "train.py" else []))
    known = max(int(path.name.split("_")[0]) for path in Path(commands[0][2]).glob("bounding_box_*/*.jpg"))
    timed("tools/synthetic.py", synthetic.main, ["--out", "data/test", "--seed", "0", "--num_ids",
                                                 str(known + 2 * test_ids), "--multi_query", "0"])  # fmt: skip
    timed("prepare.py", prepare.main, ["--data_dir", "data/test"])
    timed("test.py", test.main, ["--name", "quickstart", "--test_dir", "data/test/pytorch", "--no-progress"])
    return "quickstart", "data/test/pytorch", known


def new_people(feats: dict, known: int) -> dict:
    """The queries and gallery images of ids above `known`, with the distractors and junk (ids <= 0)."""
    q, g = feats["query_label"] > known, (feats["gallery_label"] > known) | (feats["gallery_label"] <= 0)
    out = {f"query_{k}": feats[f"query_{k}"][q] for k in ("f", "label", "cam")}
    return out | {f"gallery_{k}": feats[f"gallery_{k}"][g] for k in ("f", "label", "cam")}


def train_cuhk01(epochs: int) -> tuple[str, str]:
    """CUHK01 prepared (copies), MobileNetV2 fine-tuned for `epochs` as bench_real.py does, test.py."""
    timed("prepare.py", prepare.main, ["--data_dir", str(DATA_DIR), "--output_dir", "pytorch", "--copy"])
    model_args = [*MODELS["mobilenet_v2"][1], "--pretrained_path", str(WEIGHTS)]
    timed("train.py", train.main, ["--name", "mobilenet_v2", "--data_dir", "pytorch", "--height", "128", "--width",
                                   "64", *COMMON_ARGS, *model_args, "--total_epoch", str(epochs), "--overwrite"])  # fmt: skip
    timed(
        "test.py",
        test.main,
        ["--name", "mobilenet_v2", "--test_dir", "pytorch", "--gpu_ids", "-1", "--no-progress"],
    )
    return "mobilenet_v2", "pytorch", 0


def noise_features(name: str, prepared: str, n: int, seed: int) -> np.ndarray:
    """Features of `n` uniform-noise images the size of the dataset's first query image."""
    with Image.open(next(Path(prepared, "query").glob("*/*"))) as img:
        width, height = img.size
    rng = np.random.default_rng(seed)
    folder = Path("noise")
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"noise_{i:04d}.png")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1])
    options = SimpleNamespace(
        name=name, which_epoch="last", gpu_ids="-1", fp16=False, bf16=False, num_workers=0
    )
    return load_for_extraction(options, setup_logging()).extract(paths, 64, progress=False)


def pair_threshold(feats: dict, rate: float) -> float:
    """The old statistic: the threshold accepting `rate` of the false query-gallery pairs (another id,
    junk left out), by the same rule as gallery.threshold_at applies to best distances."""
    false_pairs, start = [], 0
    for neg_cos in feature_distance_chunks(feats["query_f"], feats["gallery_f"]):
        stop = start + len(neg_cos)
        good, junk = protocol_masks(feats["query_label"][start:stop], feats["query_cam"][start:stop],
                                    feats["gallery_label"], feats["gallery_cam"])  # fmt: skip
        false_pairs.append(euclidean(neg_cos[~good & ~junk]))
        start = stop
    return threshold_at(np.concatenate(false_pairs), rate)


def measure(feats: dict, noise_f: np.ndarray, rate: float, splits: int, seed: int) -> list[dict]:
    """gallery.held_out_check's halvings, with the noise images and the pair threshold on each."""
    runs = []
    for a, b, calibration, held_out, best_b in held_out_check(feats, rate, splits, seed):
        threshold = calibration["threshold"]
        people = b["gallery_label"] > 0
        noise_best = search(noise_f, [b["gallery_f"]], 1)[1][:, 0]
        noise_people = search(noise_f, [b["gallery_f"][people]], 1)[1][:, 0]
        pair = pair_threshold(a, rate)
        runs.append({
            "n_query": (len(a["query_f"]), len(b["query_f"])), "n_gallery": (len(a["gallery_f"]), len(b["gallery_f"])),
            "threshold": threshold, "calibration": calibration, "held_out": held_out,
            "noise": float(np.mean(noise_best <= threshold)), "noise_people": float(np.mean(noise_people <= threshold)),
            "pair": {"threshold": pair, "held_out": float(rates_at(best_b, pair)["false_match"]),
                     "noise": float(np.mean(noise_best <= pair))},
        })  # fmt: skip
    return runs


def summary(values: list[float]) -> str:
    return f"mean {np.mean(values):.2%}, min {np.min(values):.2%}, max {np.max(values):.2%}"


def main(argv=None) -> list[dict] | None:
    args = parse_args(argv)
    command = f"python bench/bench_threshold.py {shlex.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    if args.dataset == "cuhk01" and not (DATA_DIR.is_dir() and WEIGHTS.is_file()):
        print(f"bench_threshold.py: skipped, no {DATA_DIR} or no {WEIGHTS}")
        return None
    print(f"$ {command}", flush=True)
    with work_folder(args.keep, "bench_threshold-") as work, working_dir(work):
        synthetic_run = args.dataset == "synthetic"
        name, prepared, known = train_synthetic(args.test_ids) if synthetic_run else train_cuhk01(args.epochs)
        feats = new_people(load_features("pytorch_result.mat"), known)
        start = time.perf_counter()
        noise_f = noise_features(name, prepared, args.noise, args.seed)
        print(f"{time.perf_counter() - start:7.1f} s  features of {args.noise} noise images", flush=True)
    print(f"\nthe whole test set ({len(feats['query_f'])} queries x {len(feats['gallery_f'])} gallery), as "
          "calibrate.py prints it:")  # fmt: skip
    print(roc_table(features_best_distances(feats)))
    runs = measure(feats, noise_f, args.false_match_rate, args.splits, args.seed)
    target = args.false_match_rate
    print(
        f"\ncalibrated on half A of the test identities, measured on the other half B (target {target:.1%}):"
    )
    for i, r in enumerate(runs, start=1):
        h, c = r["held_out"], r["calibration"]
        print(
            f"split {i:2d}: A {r['n_query'][0]} queries x {r['n_gallery'][0]} gallery, threshold {r['threshold']:.4f} "
            f"(on A: false match {c['false_match_rate']:.2%}) | B {r['n_query'][1]} x {r['n_gallery'][1]}: false "
            f"match {h['false_match']:.2%}, true match {h['true_match']:.2%}, answered {h['answered']:.2%}; noise "
            f"answered 'match' {r['noise']:.2%} (people only {r['noise_people']:.2%}) | pair threshold "
            f"{r['pair']['threshold']:.4f}: B false match "
            f"{r['pair']['held_out']:.2%}, noise {r['pair']['noise']:.2%}"
        )
    held = [r["held_out"]["false_match"] for r in runs]
    within = sum(abs(x - target) <= 0.02 + 1e-12 for x in held)
    print(f"\nheld-out false-match rate (absent people): {summary(held)}; within 2 points of {target:.1%} in "
          f"{within} of {len(runs)} splits")  # fmt: skip
    print(
        f"held-out true-match rate (true match first, within): {summary([r['held_out']['true_match'] for r in runs])}"
    )
    print(f"held-out present people answered 'match': {summary([r['held_out']['answered'] for r in runs])}")
    print(f"noise images answered 'match' ({args.noise} per split): {summary([r['noise'] for r in runs])}; "
          f"against the people only: {summary([r['noise_people'] for r in runs])}")  # fmt: skip
    print(f"the old pair threshold ({target:.1%} of false pairs): held-out false-match rate "
          f"{summary([r['pair']['held_out'] for r in runs])}; noise {summary([r['pair']['noise'] for r in runs])}")  # fmt: skip
    print(f"\ncommand: {command}")
    print(f"machine: {machine()}, float32")
    return runs


if __name__ == "__main__":
    run_main(main)
