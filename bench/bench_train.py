"""Training throughput: train.py against the bare model, side by side in one run.

The bare model is build_model + the same SGD optimizer on one random batch (B, 3, H, W) kept in
memory: forward, backward and step in the same precision and memory format (channels_last) as
train.py, timed after two warm-up steps. train.py is a real run on the synthetic dataset (JPEG
decoding, augmentation, logging, checkpoints); its throughput is that of its second epoch (the
first includes the warm-up). Each measurement runs in its own process, with its own peak memory.

    python bench/bench_train.py                     # ResNet-50, 256x128, batch 32, fp32 and bf16
    python bench/bench_train.py --backbone resnet18 --height 128 --width 64 --precisions bf16
"""

import argparse
import sys
import time

from common import ROOT, report, side_by_side, side_by_side_parser


def bare_child(args) -> None:
    import torch

    import train
    from model import ModelConfig, build_model
    from utils import autocast

    model = build_model(ModelConfig(nclasses=100, backbone=args.backbone))
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = train.make_optimizer(model, argparse.Namespace(pretrained=False, lr=0.05, weight_decay=5e-4))
    images = torch.randn(args.batchsize, 3, args.height, args.width).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 100, (args.batchsize,))
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    device = torch.device("cpu")

    def step():
        with autocast(device, dtype):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    report(img_s=args.steps * args.batchsize / (time.perf_counter() - start))


def train_child(args) -> None:
    import torch

    import train

    run_args = ["--name", "bench", "--data_dir", args.data, "--train_all", "--total_epoch", "2",
                "--backbone", args.backbone, "--batchsize", str(args.batchsize), "--height", str(args.height),
                "--width", str(args.width), "--no-pretrained", "--gpu_ids", "-1", "--no-progress", "--overwrite"]  # fmt: skip
    if args.precision == "bf16":
        run_args.append("--bf16")
    train.main(run_args)
    history = torch.load("model/bench/checkpoint.pth", weights_only=False)["history"]
    report(img_s=history["train"][1]["img_s"], first_epoch_img_s=history["train"][0]["img_s"])


def main() -> None:
    parser = side_by_side_parser(__doc__, batchsize=32, ours="train")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of the bare model")
    args = parser.parse_args()
    if args.child == "bare":
        return bare_child(args)
    if args.child == "train":
        return train_child(args)
    side_by_side(__file__, args, ["--steps", str(args.steps)], "train", lambda bare, ours: (
        f"channels_last: bare model {bare['img_s']:.1f} img/s (peak {bare['peak_mb']:.0f} MB) | train.py "
        f"{ours['img_s']:.1f} img/s (peak {ours['peak_mb']:.0f} MB; first epoch {ours['first_epoch_img_s']:.1f})"
    ))  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
