"""Training throughput: train.py against the bare model, side by side in one run.

The bare model is build_model + the same SGD optimizer on one random batch (B, 3, H, W) kept in
memory: forward, backward and step in the same precision and memory format (channels_last) as
train.py, timed after two warm-up steps. train.py is a real run on the synthetic dataset (JPEG
decoding, augmentation, logging, checkpoints); its throughput is that of its second epoch (the
first includes the warm-up). Each measurement runs in its own process, with its own peak memory.

--train_args adds train.py options, e.g. the PK sampler and a metric loss: the bare model stays bare
(cross-entropy on a random batch), so the ratio is what the recipe costs (the target: >= 0.90). With
--sampler pk it also times one epoch of PKSampler's batches over 100,000 images of 5,000 identities
(the per-epoch work the sampler adds, on the main process).

    python bench/bench_train.py                     # ResNet-50, 256x128, batch 32, fp32 and bf16
    python bench/bench_train.py --backbone resnet18 --height 128 --width 64 --precisions bf16
    python bench/bench_train.py --precisions fp32 --train_args "--sampler pk --triplet"
"""

import argparse
import shlex
import sys
import time

from common import ROOT, report, side_by_side, side_by_side_parser


def bare_child(args) -> None:
    import torch

    import train
    from model import ModelConfig, build_model
    from utils import autocast

    model = build_model(
        ModelConfig(nclasses=100, backbone=args.backbone, height=args.height, width=args.width)
    )
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = train.make_optimizer(model, argparse.Namespace(pretrained=False, lr=0.05, weight_decay=5e-4))
    images = torch.randn(args.batchsize, 3, args.height, args.width).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 100, (args.batchsize,))
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    device = torch.device("cpu")

    def step():
        with autocast(device, dtype):
            loss = torch.nn.functional.cross_entropy(model(images)[0], labels)
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
    train.main(run_args + shlex.split(args.train_args))
    history = torch.load("model/bench/checkpoint.pth", weights_only=False)["history"]
    report(img_s=history["train"][1]["img_s"], first_epoch_img_s=history["train"][0]["img_s"])


def sampler_epoch_seconds(batchsize: int, num_instances: int) -> float:
    """Wall time of one epoch of PKSampler's batches over 100,000 images of 5,000 identities."""
    import torch

    from data import PKSampler

    labels = torch.randint(0, 5000, (100_000,), generator=torch.Generator().manual_seed(0))
    sampler = PKSampler(labels, batchsize, num_instances)
    start = time.perf_counter()
    for _ in sampler:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = side_by_side_parser(__doc__, batchsize=32, ours="train")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of the bare model")
    parser.add_argument(
        "--train_args", default="", help="more train.py options, e.g. '--sampler pk --triplet'"
    )
    args = parser.parse_args()
    if args.child == "bare":
        return bare_child(args)
    if args.child == "train":
        return train_child(args)
    train_args = ["--train_args", args.train_args] if args.train_args else []
    side_by_side(__file__, args, ["--steps", str(args.steps)], "train", lambda bare, ours: (
        f"channels_last: bare model {bare['img_s']:.1f} img/s (peak {bare['peak_mb']:.0f} MB) | train.py "
        f"{args.train_args + ' ' if args.train_args else ''}"
        f"{ours['img_s']:.1f} img/s (peak {ours['peak_mb']:.0f} MB; first epoch {ours['first_epoch_img_s']:.1f})"
    ), ours_args=train_args)  # fmt: skip
    if "pk" in shlex.split(args.train_args):
        import train  # common put the repository on sys.path

        num_instances = train.parse_args(shlex.split(args.train_args)).num_instances
        seconds = sampler_epoch_seconds(args.batchsize, num_instances)
        print(
            f"PKSampler: one epoch of batches over 100,000 images (5,000 identities) in {seconds * 1000:.0f} ms"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
