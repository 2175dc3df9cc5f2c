"""Real-data accuracy on CUHK01 within a CPU budget: the classic recipe (MobileNetV2 fine-tuned from
ImageNet, ResNet-50 from scratch) and the strong one (bag of tricks) on MobileNetV2 and OSNet.

Reads CUHK01 in Market-1501 layout (`--data_dir`, default `../shared/data/cuhk01` next to the
repository: 485 training identities x 4 images, 486 queries, 1,458 gallery images, 2 cameras) and the
MobileNetV2 ImageNet weights (`--pretrained_path`); when either is absent (the weights only matter
for the MobileNetV2 runs) it prints one line and exits with status 0. It writes nothing next to the data:
everything goes to a temporary folder (kept with --keep DIR), where prepare.py writes `pytorch/`
(copies of the images) and train.py, run in that folder, writes `model/NAME`. For each model:

1. calibration: train.py for 1 epoch; its wall time (data loading, training, the val pass,
   checkpoints) is the seconds per epoch, an estimate: later epochs can run a few percent faster or
   slower (on the development machine, ResNet-50's 25 epochs took 30.2 minutes of a 30-minute
   budget, MobileNetV2's 116 took 28.8);
2. training: train.py again from the start with --total_epoch = floor(budget / seconds per epoch),
   at least 1, so training takes about --budget_minutes on this machine and the cosine schedule spans
   exactly the epochs that fit;
3. test: test.py extracts the query and gallery features, which metrics.evaluate scores on the
   feature distance and on the k-reciprocal re-ranked distance of each --rerank setting.

It prints each model's metrics in the evaluate scripts' format with the wall times of training and
test, then a markdown table (one row per model and ranking), the command line and the machine.

Training choices, for 1,940 small images on a 2-core CPU:
- input 128x64 (CUHK01 images are 160x60): a quarter of the pixels of the classic 256x128, so about
  four times the epochs fit the budget, with the 2:1 shape of a standing person;
- float32: bfloat16 runs slower than float32 on CPUs without AVX512-BF16 or AMX (the development
  machine's AMD EPYC has neither);
- --train_all: all 4 images of each identity are trained on (the val images, the first of each
  identity, are then among them, so the val curve only shows that training progresses);
- batch 32; --erasing_p 0.5 (random erasing, against overfitting 4 images per identity);
  --warm_epoch 1; --cosine, which decays to 0.01 x lr over however many epochs the budget allows, so
  every run ends at a low learning rate;
- MobileNetV2, ImageNet weights: lr 0.05 for the new head and 0.005 for the backbone (train.py's
  0.1 x rule for a pretrained backbone), dropout 0.5, as the classic fine-tuning recipe;
- ResNet-50, random weights: lr 0.02 for every layer and dropout 0.2, the settings that trained it
  from scratch on the synthetic dataset (a deep network from scratch needs a gentler start).

The strong recipe (runs named *_strong) is the bag of tricks of Luo et al. (CVPR-W 2019) as their
code trains it, on the same data options (input size, --train_all, --erasing_p 0.5, warm-up,
cosine): Adam with every layer at the same lr (--optimizer adam --backbone_lr 1; 0.00035 for
MobileNetV2 from ImageNet weights, BoT's value), batch 64 of 16 identities x 4 images (--sampler pk:
CUHK01's 4 images of each), --neck bnneck, --stride 1, --label_smoothing 0.1, --triplet and --center.
OSNet x1.0 trains from scratch with it at lr 0.0015 (torchreid's Adam lr for OSNet): the network
designed for that, where no ImageNet weights can be had. Compare recipes at one input size; the
comparison of the issue is

    python bench/bench_real.py --models mobilenet_v2,mobilenet_v2_strong,osnet_x1_0_strong

Re-ranking, two settings, neither tuned on CUHK01's test results: evaluate_rerank.py's defaults
k1=20 k2=6 lambda=0.3 (the paper's Market-1501 values, where a query has more than ten true matches),
and k1=6 k2=3 lambda=0.3, a neighbourhood scaled to CUHK01, where a query has 2 true matches (the
other camera's 2 images; the third gallery image of the identity shares the query's camera and is
ignored).

    python bench/bench_real.py                        # both models, 30 minutes of training each
    python bench/bench_real.py --models resnet50 --budget_minutes 5 --keep /tmp/cuhk01_run
    python bench/bench_real.py --rerank 20,6,0.3 --rerank 10,4,0.5    # other re-ranking settings
"""

import argparse
import math
import os
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from common import ROOT, machine, work_folder  # first: it puts the repository on sys.path

# isort: split
import prepare
import test
import train
from features import load_features
from metrics import evaluate, feature_distance_chunks, format_results, row_chunks
from re_ranking import check_params, re_ranking
from utils import HelpFormatter, run_main

SHARED = ROOT.parent / "shared"
DATA_DIR = SHARED / "data/cuhk01"
WEIGHTS = SHARED / "weights/mobilenet_v2_imagenet_features.pth"
# The training options of every model, then each model's own: how it starts and its learning rate.
COMMON_ARGS = ["--train_all", "--batchsize", "32", "--erasing_p", "0.5", "--warm_epoch", "1", "--cosine",
               "--gpu_ids", "-1", "--no-progress"]  # fmt: skip
# The bag of tricks (Luo et al.'s BoT), added to a model's options for its *_strong run: Adam on every
# layer, 16 identities x 4 images per batch, BNNeck, last stride 1, label smoothing, triplet and center
# losses; warm-up, random erasing and the cosine decay are COMMON_ARGS'.
STRONG_ARGS = ["--optimizer", "adam", "--backbone_lr", "1", "--batchsize", "64", "--sampler", "pk",
               "--num_instances", "4", "--neck", "bnneck", "--stride", "1", "--label_smoothing", "0.1",
               "--triplet", "--center"]  # fmt: skip
MODELS = {
    "mobilenet_v2": ("ImageNet, fine-tuned", ["--backbone", "mobilenet_v2", "--lr", "0.05"]),
    "resnet50": (
        "scratch",
        ["--backbone", "resnet50", "--no-pretrained", "--lr", "0.02", "--droprate", "0.2"],
    ),
    "mobilenet_v2_strong": (
        "ImageNet, fine-tuned, strong recipe",
        ["--backbone", "mobilenet_v2", "--lr", "0.00035", *STRONG_ARGS],  # BoT's Adam lr
    ),
    "osnet_x1_0_strong": (
        "scratch, strong recipe",
        [
            "--backbone",
            "osnet_x1_0",
            "--no-pretrained",
            "--lr",
            "0.0015",
            *STRONG_ARGS,
        ],  # torchreid's for OSNet
    ),
}
DEFAULT_MODELS = ["mobilenet_v2", "resnet50"]  # the README's CUHK01 table
RERANK = ["20,6,0.3", "6,3,0.3"]  # k1,k2,lambda: evaluate_rerank.py's defaults, then CUHK01's scale


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--budget_minutes", type=float, default=30, help="training time of each model (wall, this CPU)"
    )
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from {', '.join(MODELS)}"
    )
    parser.add_argument("--height", type=int, default=128, help="input height")
    parser.add_argument("--width", type=int, default=64, help="input width")
    parser.add_argument("--data_dir", default=str(DATA_DIR), help="CUHK01 in Market-1501 layout (read-only)")
    parser.add_argument(
        "--pretrained_path", default=str(WEIGHTS), help="MobileNetV2 ImageNet weights (torchvision layout)"
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="work in DIR (new or empty) and keep it, instead of a temporary folder"
    )
    parser.add_argument(
        "--rerank",
        action="append",
        type=rerank_setting,
        metavar="K1,K2,LAMBDA",
        help=f"a re-ranking setting to score; repeat for several (default: {' and '.join(RERANK)})",
    )
    args = parser.parse_args(argv)
    args.rerank = args.rerank or [rerank_setting(setting) for setting in RERANK]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown or 'none given'}; choose from {', '.join(MODELS)}")
    if args.budget_minutes < 0:
        parser.error("--budget_minutes must be >= 0")
    return args


def rerank_setting(text: str) -> tuple[int, int, float]:
    """Parse "K1,K2,LAMBDA" into (k1, k2, lambda_value), checked as re_ranking checks them."""
    try:
        k1, k2, lambda_value = text.split(",")
        setting = (int(k1), int(k2), float(lambda_value))
        check_params(*setting)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: give K1,K2,LAMBDA such as 20,6,0.3 ({error})") from None
    return setting


def missing_input(args) -> str | None:
    """Why the benchmark cannot run here (a one-line message), or None."""
    data = Path(args.data_dir)
    if not all((data / folder).is_dir() for folder in prepare.MARKET_FOLDERS.values()):
        return f"{data}: no CUHK01 in Market-1501 layout"
    if any(uses_weights(name) for name in args.models) and not Path(args.pretrained_path).is_file():
        return f"{args.pretrained_path}: no MobileNetV2 ImageNet weights"
    return None


def uses_weights(name: str) -> bool:
    """Whether run `name` starts from the MobileNetV2 ImageNet weights of --pretrained_path."""
    return "--no-pretrained" not in MODELS[name][1]


def epochs_in_budget(budget_s: float, sec_per_epoch: float) -> int:
    """How many whole epochs of `sec_per_epoch` fit in `budget_s`; at least 1."""
    return max(1, math.floor(budget_s / sec_per_epoch))


@contextmanager
def working_dir(path: Path):
    """Run the block in `path` (train.py and test.py write relative to the current folder)."""
    cwd = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(cwd)


def timed(fn, argv: list[str]) -> float:
    """Wall time in seconds of `fn(argv)`."""
    start = time.perf_counter()
    fn(argv)
    return time.perf_counter() - start


def scores(result_file: Path, rerank: list[tuple[int, int, float]]) -> dict:
    """The metrics of a features file on the feature distance and on each re-ranked distance."""
    feats = load_features(result_file)
    q_f, g_f = feats["query_f"], feats["gallery_f"]
    labels = (feats["query_label"], feats["query_cam"], feats["gallery_label"], feats["gallery_cam"])
    info = {"result_file": result_file.name, "protocol": "single-query"}
    start = time.perf_counter()
    results = {"none": {**info, **evaluate(feature_distance_chunks(q_f, g_f), *labels)}}
    results["none"]["eval_s"] = time.perf_counter() - start
    for k1, k2, lambda_value in rerank:
        start = time.perf_counter()
        dist = re_ranking(q_f, g_f, k1, k2, lambda_value)  # (n_q, n_g)
        results[f"k1={k1} k2={k2} lambda={lambda_value}"] = {
            **info, **evaluate(row_chunks(dist), *labels), "eval_s": time.perf_counter() - start
        }  # fmt: skip
    return results


def train_args(name: str, args, data: Path) -> list[str]:
    """train.py's options for model `name` on the prepared tree `data`, without --total_epoch."""
    model_args = MODELS[name][1]
    if uses_weights(name):
        model_args = [*model_args, "--pretrained_path", str(Path(args.pretrained_path).resolve())]
    return ["--name", name, "--data_dir", str(data), "--height", str(args.height), "--width", str(args.width),
            *COMMON_ARGS, *model_args, "--overwrite"]  # fmt: skip


def run_model(name: str, args, data: Path) -> dict:
    """Calibrate, train within the budget, test and score one model (in the current folder)."""
    start_from = MODELS[name][0]
    train_argv = train_args(name, args, data)
    print(f"\n== {name} ({start_from}): calibration, 1 epoch", flush=True)
    sec_per_epoch = timed(train.main, [*train_argv, "--total_epoch", "1"])
    epochs = epochs_in_budget(args.budget_minutes * 60, sec_per_epoch)
    print(
        f"== {name}: 1 epoch took {sec_per_epoch:.1f} s; the {args.budget_minutes:g}-minute budget "
        f"gives --total_epoch {epochs}",
        flush=True,
    )
    train_s = timed(train.main, [*train_argv, "--total_epoch", str(epochs)])
    result_file = Path(f"{name}_result.mat")
    test_s = timed(test.main, ["--name", name, "--test_dir", str(data), "--result_file", str(result_file),
                               "--gpu_ids", "-1", "--no-progress"])  # fmt: skip
    run = {"model": name, "start_from": start_from, "sec_per_epoch": sec_per_epoch, "epochs": epochs,
           "train_s": train_s, "test_s": test_s, "rankings": scores(result_file, args.rerank)}  # fmt: skip
    print(f"\n== {name} ({start_from}), {args.height}x{args.width}, --total_epoch {epochs}")
    print(
        f"train: {train_s:.1f} s ({train_s / epochs:.1f} s/epoch; calibration epoch {sec_per_epoch:.1f} s); "
        f"test: {test_s:.1f} s"
    )
    for ranking, results in run["rankings"].items():
        print(f"-- re-ranking: {ranking} (distances + metric: {results['eval_s']:.2f} s)")
        print(format_results(results))
    return run


def table(runs: list[dict], args) -> str:
    """One markdown row per model and ranking."""
    columns = ["model", "start", "input", "epochs (s/epoch)", "re-ranking", "Rank@1", "Rank@5", "Rank@10",
               "mAP (Market-1501 rule)", "mAP (non-interpolated)", "mINP", "train", "test"]  # fmt: skip
    rows = [f"| {' | '.join(columns)} |", "|---" * len(columns) + "|"]
    for run in runs:
        for ranking, r in run["rankings"].items():
            rows.append(
                f"| {run['model']} | {run['start_from']} | {args.height}x{args.width} "
                f"| {run['epochs']} ({run['train_s'] / run['epochs']:.1f} s) | {ranking} "
                f"| {r['rank1']:.4f} | {r['rank5']:.4f} | {r['rank10']:.4f} | {r['mAP_market1501']:.4f} "
                f"| {r['mAP']:.4f} | {r['mINP']:.4f} | {run['train_s'] / 60:.1f} min | {run['test_s']:.1f} s |"
            )
    return "\n".join(rows)


def main(argv=None) -> list[dict] | None:
    """Run the benchmark; return one dict per model (None when skipped)."""
    args = parse_args(argv)
    command = f"python bench/bench_real.py {shlex.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    reason = missing_input(args)
    if reason:
        print(f"bench_real.py: skipped, {reason}")
        return None
    print(f"$ {command}", flush=True)
    with work_folder(args.keep, "bench_real-") as work:
        data = work / "pytorch"
        # Copies, not links: nothing in the work folder shares a file with the raw dataset.
        prepare.main(["--data_dir", str(Path(args.data_dir).resolve()), "--output_dir", str(data), "--copy"])
        with working_dir(work):
            runs = [run_model(name, args, data) for name in args.models]
    print(f"\n{table(runs, args)}\n")
    print(f"command: {command}")
    print(f"machine: {machine()}, float32")
    if args.keep:
        print(f"kept: {Path(args.keep).resolve()}")
    return runs


if __name__ == "__main__":
    run_main(main)
