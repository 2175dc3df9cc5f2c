"""CPU speed: the runtimes and settings that could make extraction and training faster, side by side.

Each measurement runs in its own child process (so compilation caches, allocator state and peak
memory are its own), one after the other, on the same synthetic data:

- extraction runtimes on in-memory images (image + flip, float32, batch 64): eager torch (test.py's
  path, channels_last), torch.compile of the model, and onnxruntime on the graph export.py writes;
- test.py end to end (decoding the JPEGs, writing the features file), with each --backend and with
  --num_workers 0 and 1 (decoding in the main process, or in a worker beside it);
- glibc's allocator keeping freed blocks for reuse, the lever test.py and train.py adopted on CPUs
  (utils.keep_freed_memory): each run "before" it has glibc's default instead (the child turns the
  lever off), for eager extraction and for training;
- train.py img/s (second epoch), float32 and, where the CPU has native bfloat16 (AVX512-BF16 or AMX),
  bfloat16, with --num_workers 0 and 1, before the lever and with the defaults;
- test.py under `torchrun --nproc_per_node 2` (gloo, one thread each) against one process (two
  threads), with the defaults: the wall time of each, and the two features files compared.

    python bench/bench_cpu.py                                   # ResNet-50 256x128, MobileNetV2 128x64
    python bench/bench_cpu.py --models resnet18:128x64 --parts extract
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, prepared_synthetic, report, run_child

MODELS = "resnet50:256x128,mobilenet_v2:128x64"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=MODELS, help="comma-separated BACKBONE:HEIGHTxWIDTH")
    parser.add_argument("--parts", default="extract,test,train", help="comma-separated: extract, test, train")
    parser.add_argument("--batches", type=int, default=4, help="timed batches of the in-memory runtimes")
    parser.add_argument("--num_ids", type=int, default=60, help="synthetic identities (half for training)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--extra", default="", help=argparse.SUPPRESS)
    parser.add_argument("--before", action="store_true", help=argparse.SUPPRESS)  # glibc's default allocator
    return parser.parse_args(argv)


def model_of(args):
    import torch

    from model import ModelConfig, build_model

    backbone, size = args.model.split(":")
    height, width = (int(v) for v in size.split("x"))
    config = ModelConfig(nclasses=100, backbone=backbone, height=height, width=width)
    return build_model(config).eval(), config, torch.rand(64, 3, height, width)


def timed_batches(run, images, batches: int) -> float:
    run(images)  # warm-up (and, for torch.compile, the compilation)
    start = time.perf_counter()
    for _ in range(batches):
        run(images)
    return batches * len(images) / (time.perf_counter() - start)


def extract_child(args) -> None:
    """Image + flip features of random images already in memory, with one runtime."""
    import torch

    from deploy import FeatureGraph, OnnxFeatures, export_onnx
    from features import embed_batch

    model, config, images = model_of(args)
    model = model.to(memory_format=torch.channels_last)
    if args.child == "eager":
        run = lambda x: embed_batch(model, x)
    elif args.child == "compile":
        start = time.perf_counter()
        compiled = torch.compile(model)
        run = lambda x: embed_batch(compiled, x)
        run(images)
        print(f"compilation: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            export_onnx(model, config, path, {"model": "bench"}, imagenet=False)
            onnx = OnnxFeatures(path)
        graph = FeatureGraph(model, imagenet=False, flip=True, l2=True)  # same output, for the check
        assert abs(onnx(images[:2]) - graph(images[:2]).numpy()).max() < 1e-4
        run = onnx
    report(img_s=timed_batches(run, images, args.batches))


def test_child(args) -> None:
    """test.py end to end on the synthetic query and gallery images; options in --extra."""
    import torch

    import export
    import test as extract
    from utils import save_yaml

    model, config, _ = model_of(args)
    Path("model/bench").mkdir(parents=True, exist_ok=True)
    save_yaml("model/bench/opts.yaml", {"model": config.to_dict(), "data_dir": args.data})
    torch.save(model.state_dict(), "model/bench/net_last.pth")
    extra = args.extra.split()
    if "onnxruntime" in extra or "--backend" not in extra:  # exported before the clock (auto: once)
        export.main(["--name", "bench", "--check_images", "8"])
    start = time.perf_counter()
    extract.main(["--name", "bench", "--test_dir", args.data, "--gpu_ids", "-1", "--no-progress", *extra])
    elapsed = time.perf_counter() - start
    n = sum(len(list(Path(args.data, split).rglob("*.jpg"))) for split in ("query", "gallery"))
    report(img_s=n / elapsed, images=n)


def train_child(args) -> None:
    """train.py for 2 epochs; the img/s of the second (the first includes the warm-up)."""
    import torch

    import train

    backbone, size = args.model.split(":")
    height, width = size.split("x")
    train.main(["--name", "bench", "--data_dir", args.data, "--train_all", "--total_epoch", "2", "--backbone",
                backbone, "--height", height, "--width", width, "--no-pretrained", "--gpu_ids", "-1",
                "--no-progress", "--overwrite", *args.extra.split()])  # fmt: skip
    history = torch.load("model/bench/checkpoint.pth", weights_only=False)["history"]
    report(img_s=history["train"][1]["img_s"])


def measure(
    args, data: Path, work: Path, child: str, model: str, extra: str = "", env: dict | None = None
) -> dict:
    argv = [
        str(Path(__file__).resolve()),
        "--child",
        child,
        "--model",
        model,
        "--data",
        str(data),
        f"--extra={' '.join(w for w in extra.split() if w != '--before')}",  # one word: they start with --
    ]
    argv += ["--before"] if "--before" in extra.split() else []
    argv += ["--batches", str(args.batches)]
    os.environ.update(env or {})
    try:
        return run_child(argv, cwd=work)
    finally:
        for key in env or {}:
            del os.environ[key]


def torchrun_run(data: Path, work: Path, model: str, nproc: int) -> tuple[float, Path]:
    """The wall time of test.py (defaults) under torchrun with `nproc` processes (1: plain python), on
    the untrained model model/bench that test_child saved for `model`; and the features file."""
    import subprocess

    result = work / f"torchrun{nproc}.mat"
    argv = [str(ROOT / "test.py"), "--name", "bench", "--test_dir", str(data), "--gpu_ids", "-1", "--no-progress",
            "--result_file", str(result)]  # fmt: skip
    if nproc > 1:
        argv = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *argv]
    start = time.perf_counter()
    run = subprocess.run([sys.executable, *argv], cwd=work, capture_output=True, text=True, check=False, env={
        **os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))})  # fmt: skip
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{run.stderr[-3000:]}")
    return time.perf_counter() - start, result


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.before:
        import utils

        utils.keep_freed_memory = lambda: False  # glibc's default: what the runs measure the lever against
    if args.child in ("eager", "compile", "onnxruntime"):
        return extract_child(args)
    if args.child == "test":
        return test_child(args)
    if args.child == "train":
        return train_child(args)
    from utils import cpu_has_bfloat16

    print(f"$ python bench/bench_cpu.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"machine: {machine()}; native bfloat16: {'yes' if cpu_has_bfloat16() else 'no'}")
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        data = prepared_synthetic(Path(tmp), num_ids=args.num_ids)
        for model in args.models.split(","):
            print(f"\n== {model}")

            def line(what: str, child: str, extra: str = "", env: dict | None = None, model=model) -> float:
                result = measure(args, data, Path(tmp), child, model, extra, env)
                print(
                    f"{what:<60} {result['img_s']:7.1f} img/s  (peak {result['peak_mb']:.0f} MB)", flush=True
                )
                return result["img_s"]

            if "extract" in parts:
                for child in ("eager", "compile", "onnxruntime"):
                    line(f"extraction, in memory, {child}", child)
                line("extraction, in memory, eager, before keeping freed memory", "eager", "--before")
            if "test" in parts:
                for backend in ("torch", "onnxruntime"):
                    for workers in ("0", "1"):
                        extra = f"--backend {backend} --num_workers {workers}"
                        line(f"test.py {extra}", "test", extra)
                line("test.py (defaults)", "test")
                if "," not in args.models or model == args.models.split(",")[0]:  # the first model's
                    import numpy as np

                    from features import load_features

                    one, one_file = torchrun_run(data, Path(tmp), model, 1)
                    two, two_file = torchrun_run(data, Path(tmp), model, 2)
                    a, b = load_features(one_file), load_features(two_file)
                    same = all(
                        np.array_equal(a[k], b[k]) for k in ("query_label", "gallery_label", "gallery_cam")
                    )
                    diff = max(float(np.abs(a[k] - b[k]).max()) for k in ("query_f", "gallery_f"))
                    print(f"test.py, 1 process: {one:.1f} s; torchrun --nproc_per_node 2 (gloo): {two:.1f} s "
                          f"(x{one / two:.2f}); same images in the same order: {same}; largest feature "
                          f"difference {diff:.1e}", flush=True)  # fmt: skip
            if "train" in parts:
                before = line(
                    "train.py --num_workers 0, before keeping freed memory",
                    "train",
                    "--num_workers 0 --before",
                )
                for extra in ("--num_workers 1", "--bf16"):
                    line(f"train.py {extra}", "train", extra)
                after = line("train.py (defaults)", "train")
                print(
                    f"train.py: x{after / before:.2f} img/s with the adopted levers (defaults against before)"
                )
    print(f"\nmachine: {machine()}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
