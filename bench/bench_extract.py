"""Feature extraction throughput: test.py against the bare model, side by side in one run.

The bare model does the same computation as test.py on random tensors already in memory: for each
batch, model.embed of the images and of their horizontal flips (features.embed_batch), in the
same precision and memory format. test.py is a real run on the query and gallery images of the
synthetic dataset (JPEG decoding, resizing, writing the features file), run by PyTorch as the bare
model is (`--backend torch`; bench_cpu.py compares the runtimes, onnxruntime included). Both use an
untrained network of the same architecture; the weights don't change the speed. One process per
measurement.

    python bench/bench_extract.py                   # ResNet-50, 256x128, batch 64, fp32 and bf16
"""

import sys
import time
from pathlib import Path

from common import ROOT, report, side_by_side, side_by_side_parser


def bare_child(args) -> None:
    import torch

    from features import embed_batch
    from model import ModelConfig, build_model
    from utils import autocast

    config = ModelConfig(nclasses=100, backbone=args.backbone)
    model = build_model(config).eval().to(memory_format=torch.channels_last)
    images = torch.randn(args.batchsize, 3, args.height, args.width)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    device = torch.device("cpu")

    def batch():
        with autocast(device, dtype):
            embed_batch(model, images)

    batch()  # warm-up
    start = time.perf_counter()
    for _ in range(args.batches):
        batch()
    report(img_s=args.batches * args.batchsize / (time.perf_counter() - start))


def test_child(args) -> None:
    import torch

    import test as extract  # our test.py
    from model import ModelConfig, build_model
    from utils import save_yaml

    config = ModelConfig(nclasses=100, backbone=args.backbone, height=args.height, width=args.width)
    Path("model/bench").mkdir(parents=True, exist_ok=True)
    save_yaml("model/bench/opts.yaml", {"model": config.to_dict()})
    torch.save(build_model(config).state_dict(), "model/bench/net_last.pth")
    argv = ["--name", "bench", "--test_dir", args.data, "--gpu_ids", "-1", "--batchsize", str(args.batchsize),
            "--no-progress", "--backend", "torch"]  # fmt: skip
    if args.precision == "bf16":
        argv.append("--bf16")
    start = time.perf_counter()
    extract.main(argv)
    elapsed = time.perf_counter() - start
    n = len(list(Path(args.data, "query").rglob("*.jpg"))) + len(
        list(Path(args.data, "gallery").rglob("*.jpg"))
    )
    report(img_s=n / elapsed, images=n)


def main() -> None:
    parser = side_by_side_parser(__doc__, batchsize=64, ours="test")
    parser.add_argument("--batches", type=int, default=5, help="timed batches of the bare model")
    args = parser.parse_args()
    if args.child == "bare":
        return bare_child(args)
    if args.child == "test":
        return test_child(args)
    side_by_side(__file__, args, ["--batches", str(args.batches)], "test", lambda bare, ours: (
        f"image + flip: bare model {bare['img_s']:.1f} img/s (peak {bare['peak_mb']:.0f} MB) | test.py "
        f"{ours['img_s']:.1f} img/s on {ours['images']} images (peak {ours['peak_mb']:.0f} MB)"
    ))  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
