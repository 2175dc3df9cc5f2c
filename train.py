"""Train a re-ID network: an identity classifier, optionally with metric losses (losses.py).

Reads an ImageFolder tree written by prepare.py (`train/` or `train_all/`, and `val/`) and writes
`model/NAME/`: opts.yaml (every option, the number of classes, the command line, and the model
configuration under `model`, which test.py rebuilds the network from), checkpoints `net_009.pth,
net_019.pth, ...` (every 10 epochs) and `net_last.pth` (state_dicts of the model), with --wa
`net_average.pth` (the weight average), `checkpoint.pth` (the full state for --resume), `train.jpg`
(loss terms and top-1 error curves) and `train.log`.

    python train.py --name ft_ResNet50 --data_dir ../Market/pytorch --train_all --batchsize 32
    python train.py --name bot --train_all --sampler pk --neck bnneck --stride 1 --label_smoothing 0.1 \
        --triplet --erasing_p 0.5 --warm_epoch 10 --total_epoch 120 --steps 40,70   # the bag of tricks
    torchrun --nproc_per_node=2 train.py --name ddp --batchsize 32   # 32 images per process
"""

import argparse
import contextlib
import fcntl
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from matplotlib.figure import Figure
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from data import PKSampler, add_sampler_options, image_folder, test_transform, train_transform
from losses import ReIDLoss, add_loss_options, check_loss_options, predictions
from model import ModelConfig, add_model_options, build_model, load_opts, load_torch_file
from utils import (
    HelpFormatter,
    UserError,
    add_device_args,
    autocast,
    non_negative_float,
    non_negative_int,
    num_workers,
    positive_float,
    positive_int,
    precision_name,
    probability,
    run_main,
    run_precision,
    save_yaml,
    select_device,
    set_seed,
    setup_logging,
    torch_save,
)

CHECKPOINT_EVERY = 10
# Classic toolkit flags with no counterpart here: why, and what to do instead.
UNSUPPORTED = {
    "--DG": "downloads the 128,307-image DG-Market set at run time, and this toolkit downloads no data; "
    "add extra training images to your prepared train/ folder instead",
    "--use_NAS": "NASNet-A-Large came from the unmaintained pretrainedmodels package; use --backbone timm:nasnetalarge",
    "--FSGD": "apex's fused SGD is not needed: torch's SGD already runs multi-tensor kernels; drop --FSGD",
    "--usam": "USAM (a cross-view geo-localization module, TIP 2022) is not part of this toolkit; drop --usam",
    "--adv": "adversarial query training (U-turn, IJCV 2022) is not part of this toolkit; drop --adv and --aiter",
    "--aiter": "adversarial query training (U-turn, IJCV 2022) is not part of this toolkit; drop --adv and --aiter",
}


class Unsupported(argparse.Action):
    """A classic flag that stops the parser with the one-line reason of UNSUPPORTED."""

    def __init__(self, option_strings, dest, **kwargs):
        nargs = "?" if option_strings[0] in ("--adv", "--aiter") else 0  # these two take a value
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=nargs, help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {UNSUPPORTED[option_string]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--name", default="ft_ResNet50", help="output folder model/NAME")
    parser.add_argument("--data_dir", default="../Market/pytorch", help="prepared dataset (prepare.py)")
    parser.add_argument("--train_all", action="store_true", help="train on train_all/ (train + val)")
    parser.add_argument("--batchsize", type=positive_int, default=32, help="images per step (per process)")
    parser.add_argument(
        "--lr", type=positive_float, default=0.05, help="learning rate (a pretrained backbone: 0.1 x lr)"
    )
    parser.add_argument("--weight_decay", type=non_negative_float, default=5e-4, help="weight decay")
    parser.add_argument(
        "--optimizer", default="sgd", choices=["sgd", "adam", "adamw"], help="sgd: Nesterov momentum 0.9"
    )
    parser.add_argument(
        "--backbone_lr",
        type=positive_float,
        default=None,
        help="the backbone's lr as a fraction of --lr; None: 0.1 from ImageNet weights (the classic "
        "fine-tuning), 1 from scratch (BoT: 1 with Adam)",
    )
    parser.add_argument(
        "--total_epoch",
        type=positive_int,
        default=60,
        help="epochs; with --resume, a larger number extends the run (its lr schedule is stretched to it)",
    )
    parser.add_argument(
        "--warm_epoch", type=non_negative_int, default=0, help="epochs of linear lr warm-up from 0.1x"
    )
    parser.add_argument("--cosine", action="store_true", help="cosine lr decay instead of x0.1 at 2/3")
    parser.add_argument(
        "--steps", default=None, help="lr x0.1 at each of these epochs instead of at 2/3, e.g. 40,70 (BoT)"
    )
    parser.add_argument("--wa", action="store_true", help="also keep a weight average (EMA): net_average.pth")
    parser.add_argument("--wa_decay", type=float, default=0.999, help="EMA decay per step of --wa")
    parser.add_argument("--erasing_p", type=probability, default=0, help="random erasing probability")
    parser.add_argument("--color_jitter", action="store_true", help="colour jitter augmentation")
    add_sampler_options(parser)
    add_loss_options(parser)
    add_model_options(parser)
    for flag in UNSUPPORTED:
        parser.add_argument(flag, action=Unsupported)
    parser.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start from torchvision's ImageNet weights",
    )
    parser.add_argument(
        "--pretrained_path", default=None, help="ImageNet weights from a local state_dict file"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue model/NAME from its last checkpoint, with its saved options (only --total_epoch, "
        "the device, workers and progress bars may be given anew)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in model/NAME; the old one is deleted only once the new one has written "
        "its first checkpoint, and put back if it fails before",
    )
    add_device_args(parser)
    return parser


def parse_args(argv=None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    try:  # the architecture options, checked and completed (input size, head) by the model config
        config = ModelConfig.from_options({**vars(args), "nclasses": 1})
    except UserError as err:
        parser.error(str(err))
    args.height, args.width = config.height, config.width
    args.droprate, args.linear_num = config.droprate, config.linear_num
    if args.pretrained_path:
        args.pretrained = True
    problem = check_loss_options(args)
    if problem:
        parser.error(problem)
    if args.steps is not None:
        try:
            args.steps = sorted(int(epoch) for epoch in str(args.steps).split(","))
        except ValueError:
            parser.error(f"--steps {args.steps!r}: give comma-separated epochs, e.g. 40,70")
        if args.cosine:
            parser.error("--steps and --cosine are two decay schedules: choose one")
    if args.sampler == "pk" and (args.num_instances < 1 or args.batchsize % args.num_instances):
        parser.error(
            f"--batchsize {args.batchsize} must be a multiple of --num_instances {args.num_instances}"
        )
    if args.sampler == "pk" and args.batchsize // args.num_instances < 2:
        parser.error(
            "--sampler pk needs at least 2 identities per batch: raise --batchsize / --num_instances"
        )
    if not 0 < args.wa_decay < 1:
        parser.error("--wa_decay must be between 0 and 1")
    return args


def lr_factor(step: int, steps_per_epoch: int, args) -> float:
    """Learning-rate multiplier at optimisation step `step` (counted from 0 over the whole run).

    Linear warm-up from 0.1 to 1 over the first `warm_epoch` epochs, times the decay: x0.1 after
    2/3 of the epochs, x0.1 at each epoch of --steps, or cosine down to 0.01 with --cosine.
    """
    epoch = step // steps_per_epoch
    warm_steps = args.warm_epoch * steps_per_epoch
    warm = 0.1 + 0.9 * step / warm_steps if step < warm_steps else 1.0
    if args.cosine:
        decay = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * epoch / args.total_epoch))
    elif getattr(args, "steps", None):
        decay = 0.1 ** sum(epoch >= step for step in args.steps)
    else:
        decay = 0.1 if epoch >= args.total_epoch * 2 // 3 else 1.0
    return warm * decay


def backbone_lr_scale(args) -> float:
    """--backbone_lr, or its default: 0.1 for a backbone with ImageNet weights, else 1."""
    scale = getattr(args, "backbone_lr", None)
    return scale if scale is not None else 0.1 if args.pretrained else 1.0


def make_optimizer(model: nn.Module, args, criterion: nn.Module | None = None) -> torch.optim.Optimizer:
    """--optimizer: SGD (Nesterov momentum 0.9), Adam or AdamW. The new head (and the loss's own
    weights, e.g. ArcFace's) learns at lr, the backbone at --backbone_lr x lr: by default the same when
    trained from scratch, 0.1 x when it starts from ImageNet weights (fine-tuning). Frozen parameters
    (BNNeck's bias) are left out."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    head = [p for p in model.parameters() if id(p) not in backbone_ids and p.requires_grad]
    head += list(criterion.parameters()) if criterion is not None else []
    groups = [
        {"params": backbone, "lr": args.lr * backbone_lr_scale(args)},
        {"params": head, "lr": args.lr},
    ]
    optimizer = getattr(args, "optimizer", "sgd")
    if optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=args.lr, weight_decay=args.weight_decay, momentum=0.9, nesterov=True
        )
    adam = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    return adam(groups, lr=args.lr, weight_decay=args.weight_decay)


def loss_and_correct(criterion, outputs, labels: torch.Tensor) -> tuple[torch.Tensor, dict, int]:
    """The objective (losses.ReIDLoss) of the network's outputs, its terms, and the number of correct
    top-1 predictions."""
    loss, terms = criterion(outputs, labels)
    return loss, terms, (predictions(outputs[0]) == labels).sum().item()


def average_gradients(module: nn.Module) -> None:
    """Average the gradients of `module` over the processes, as DDP does for the model: the loss's own
    weights live outside the DDP-wrapped network."""
    if not dist.is_initialized():
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def run_epoch(
    model, loader, device, amp_dtype, args, criterion, optimizer=None, scheduler=None, scaler=None, ema=None,
    desc="",
) -> dict:  # fmt: skip
    """One pass over `loader`: training when an optimizer is given (and updating the weight average
    `ema` after each step), else evaluation.

    Returns the mean loss and the mean of each of its terms, top-1 accuracy and images per second
    (over this process's images).
    """
    training = optimizer is not None
    model.train(training)
    criterion.train(training)
    total_loss, correct, seen, term_sums = 0.0, 0, 0, {}
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not args.progress, leave=False, dynamic_ncols=True)
    for inputs, labels in bar:
        inputs = inputs.to(device, non_blocking=True).to(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with torch.set_grad_enabled(training), autocast(device, amp_dtype):
            outputs = model(inputs)
            loss, terms, n_correct = loss_and_correct(criterion, outputs, labels)
        if training:
            if not torch.isfinite(loss):
                raise UserError(
                    f"the loss became {loss.item()} in epoch {desc}; stopped, the last good checkpoint "
                    f"is kept in model/{args.name}; try a lower --lr or --warm_epoch"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            average_gradients(criterion)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model.module if isinstance(model, DistributedDataParallel) else model)
        total_loss += loss.item() * len(labels)
        for name, value in terms.items():
            term_sums[name] = term_sums.get(name, 0.0) + value.item() * len(labels)
        correct += n_correct
        seen += len(labels)
        bar.set_postfix(
            loss=f"{total_loss / seen:.3f}",
            acc=f"{correct / seen:.3f}",
            img_s=f"{seen / (time.perf_counter() - start):.1f}",
        )
    elapsed = time.perf_counter() - start
    terms = {name: value / seen for name, value in term_sums.items()}
    return {"loss": total_loss / seen, "acc": correct / seen, "img_s": seen / elapsed, "terms": terms}


def reduce_stats(stats: dict, device) -> dict:
    """Average the epoch statistics over the processes of a distributed run."""
    if not dist.is_initialized():
        return stats
    names = list(stats["terms"])
    values = [stats["loss"], stats["acc"], stats["img_s"], *(stats["terms"][name] for name in names)]
    values = torch.tensor(values, device=device, dtype=torch.float64)
    dist.all_reduce(values)
    world = dist.get_world_size()
    # Throughput adds up over processes; losses and accuracy are averaged.
    terms = {name: values[3 + i].item() / world for i, name in enumerate(names)}
    return {"loss": values[0].item() / world, "acc": values[1].item() / world, "img_s": values[2].item(),
            "terms": terms}  # fmt: skip


def format_terms(stats: dict) -> str:
    """' (id 1.2345 triplet 0.1234)' when the loss has several terms, else ''."""
    terms = stats.get("terms", {})
    return f" ({' '.join(f'{name} {value:.4f}' for name, value in terms.items())})" if len(terms) > 1 else ""


def draw_curves(history: dict, path: Path) -> None:
    """Loss (train, val, and each term of the training loss when it has several) and top-1 error per
    epoch, side by side."""
    fig = Figure(figsize=(9, 3.5))
    epochs = range(len(history["train"]))
    for ax, key, title in zip(fig.subplots(1, 2), ["loss", "err"], ["loss", "top-1 error"]):
        for split, marker in [("train", "o-"), ("val", "s-")]:
            values = [s["loss"] if key == "loss" else 1 - s["acc"] for s in history[split]]
            ax.plot(list(epochs), values, marker, label=split, markersize=3)
        terms = history["train"][-1].get("terms", {}) if history["train"] else {}
        if key == "loss" and len(terms) > 1:
            for name in terms:
                values = [s["terms"].get(name, float("nan")) for s in history["train"]]
                ax.plot(list(epochs), values, "--", label=f"train {name}", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def random_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict) -> None:
    """Restore random_states(). torch wants its states as CPU byte tensors, wherever they were loaded."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


# ----------------------------------------------------------------------------------------------------
# The run folder: one run per model/NAME, never lost, never mixed with another.

# What --resume may change: where and how visibly the run goes on, and (only upwards) its length.
RESUME_MAY_CHANGE = ("gpu_ids", "progress", "num_workers", "resume", "total_epoch")


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold model/.NAME.lock for the whole run, so a second train.py on the same NAME stops at once.

    The lock is an flock: the kernel drops it when the process ends, however it ends, so a killed run
    leaves no stale lock. The file holds the PID of the run that has it, for the message.
    """
    lock_file = run_dir.parent / f".{run_dir.name}.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise UserError(
                f"{run_dir} is being trained by another train.py (process {f.read().strip() or '?'}): wait "
                "for it to end, or choose another --name"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def given_options(parser: argparse.ArgumentParser, argv) -> dict:
    """The options the command line sets itself (dest -> value), leaving out those left at their default."""
    unset = object()
    namespace = argparse.Namespace(**{action.dest: unset for action in parser._actions})
    return {k: v for k, v in vars(parser.parse_args(argv, namespace)).items() if v is not unset}


def resumed_args(args, given: dict, run_dir: Path, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """--resume: the saved options of the run, with what --resume may change; a UserError naming every
    other option given with a value that differs from the saved one."""
    opts_file, checkpoint = run_dir / "opts.yaml", run_dir / "checkpoint.pth"
    if not checkpoint.is_file() or not opts_file.is_file():
        raise UserError(f"{run_dir}: nothing to resume (no checkpoint.pth); start it without --resume")
    # A run saved before an option existed resumes with the option's default (the recipe it had).
    saved = {**vars(parse_args([], parser)), **load_opts(opts_file), "resume": True}
    flags = {}  # dest -> its main option (the first declared: --backbone, not its alias --use_dense)
    for action in parser._actions:
        if action.option_strings:
            flags.setdefault(action.dest, action.option_strings[0])
    # Compared as parse_args completes them (--steps 40,70 is [40, 70]).
    differ = [flags[k] for k in given if k not in RESUME_MAY_CHANGE and saved.get(k) != getattr(args, k)]
    if differ:
        raise UserError(
            f"{run_dir} was trained with other {', '.join(differ)}: --resume continues the run as it was "
            "started (only --total_epoch may grow); drop them, or start a new run with another --name"
        )
    done = load_checkpoint(checkpoint)["epoch"] + 1
    if args.total_epoch < done and "total_epoch" in given:
        raise UserError(f"--total_epoch {args.total_epoch}: {run_dir} has already trained {done} epochs")
    resumed = argparse.Namespace(**saved)
    resumed.gpu_ids, resumed.progress, resumed.num_workers = args.gpu_ids, args.progress, args.num_workers
    if "total_epoch" in given:
        resumed.total_epoch = args.total_epoch
    return resumed


def claim_run_dir(args, run_dir: Path) -> Path | None:
    """Make model/NAME ready for a new run (not --resume); return where an --overwrite-n run was moved.

    - No folder, or only the log of a start that failed before training: the run starts there.
    - A run that stopped before its first checkpoint (no checkpoint.pth): nothing to lose but its
      options and log, so it starts again there.
    - A run with a checkpoint: refused, unless --overwrite; then the old run is moved aside (to
      model/.NAME.old-PID) and deleted only once the new run has written its first checkpoint.
    - Any other files: refused, they are not a run.
    """
    if not run_dir.is_dir():
        return None
    if (run_dir / "checkpoint.pth").is_file():
        if not args.overwrite:
            raise UserError(
                f"{run_dir} holds another run: choose another --name, --resume it, or --overwrite it"
            )
        old = run_dir.parent / f".{run_dir.name}.old-{os.getpid()}"
        os.rename(run_dir, old)
        return old
    names = {p.name for p in run_dir.iterdir()}
    if "opts.yaml" in names:  # started, but stopped before its first checkpoint
        for name in names & {"opts.yaml", "train.jpg"}:
            (run_dir / name).unlink()
    elif names - {"train.log"}:
        raise UserError(f"{run_dir} holds files but no training run (no opts.yaml); choose another --name")
    return None


def load_checkpoint(path: Path) -> dict:
    """checkpoint.pth: everything --resume needs."""
    return load_torch_file(path, weights_only=False)


def main(argv=None) -> None:
    parser = build_parser()
    args = parse_args(argv, parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    rank = int(os.environ.get("RANK", "0"))
    run_dir = Path("model") / args.name
    with run_lock(run_dir) if rank == 0 else contextlib.nullcontext():
        old_run = None
        if args.resume:
            args = resumed_args(args, given_options(parser, argv), run_dir, parser)
        elif rank == 0:
            old_run = claim_run_dir(args, run_dir)
        try:
            train(args, argv, run_dir, old_run)
        except BaseException as err:
            put_back = old_run is not None and old_run.exists()
            if put_back:  # the new run failed before its first checkpoint: the old one comes back
                shutil.rmtree(run_dir, ignore_errors=True)
                os.rename(old_run, run_dir)
            if isinstance(err, KeyboardInterrupt):
                raise KeyboardInterrupt(interrupted_message(run_dir, put_back)) from None
            raise


def interrupted_message(run_dir: Path, put_back: bool) -> str:
    """What a Ctrl-C leaves and how to go on, in one line."""
    name = run_dir.name
    if put_back:
        return f"the earlier run in {run_dir} is back in place, unchanged"
    if (run_dir / "checkpoint.pth").is_file():
        epoch = load_checkpoint(run_dir / "checkpoint.pth")["epoch"]
        return (
            f"{run_dir} is kept after epoch {epoch}; continue it with: python train.py --name {name} --resume"
        )
    return f"{run_dir} stopped before its first checkpoint; start it again with the same command"


def train(args, argv: list[str], run_dir: Path, old_run: Path | None) -> None:
    """Train the run `args` in run_dir (resumed when args.resume); delete old_run (the run that
    --overwrite replaces) once the first checkpoint is written."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    is_main = rank == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    logger = setup_logging(run_dir / "train.log" if is_main else None)
    if not is_main:
        logger.setLevel("ERROR")
    device = select_device(args.gpu_ids, logger)
    if distributed:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    amp_dtype = run_precision(args, device, logger)
    # Each process its own augmentation randomness; DDP copies rank 0's initial weights to all.
    set_seed(args.seed + rank)

    data_dir = Path(args.data_dir)
    augment = train_transform(args.height, args.width, args.erasing_p, args.color_jitter)
    train_data = image_folder(data_dir / ("train_all" if args.train_all else "train"), augment)
    val_data = image_folder(data_dir / "val", test_transform(args.height, args.width))
    world = dist.get_world_size() if distributed else 1
    if len(train_data) < args.batchsize * world:
        raise UserError(
            f"{train_data.root} has {len(train_data)} images, fewer than one batch "
            f"({args.batchsize} x {world} processes); lower --batchsize"
        )
    unknown = sorted(set(val_data.classes) - set(train_data.class_to_idx))
    if unknown:
        raise UserError(
            f"{data_dir}/val has identities that the training split lacks ({unknown[:3]}...); run prepare.py again"
        )
    # Val labels must be the training class indices of the same identity.
    val_data.samples = [(p, train_data.class_to_idx[val_data.classes[i]]) for p, i in val_data.samples]
    val_data.targets = [i for _, i in val_data.samples]
    args.nclasses = len(train_data.classes)

    workers = num_workers(args, device)
    if args.sampler == "pk":  # P identities x K images per batch, each process its own identities
        try:
            sampler = PKSampler(
                train_data.targets, args.batchsize, args.num_instances, args.seed, world, rank
            )
        except ValueError as err:
            raise UserError(f"{train_data.root}: {err}; lower --batchsize or raise --num_instances") from None
        train_loader = DataLoader(
            train_data, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda"
        )
    else:
        sampler = (
            DistributedSampler(train_data, shuffle=True, seed=args.seed, drop_last=True)
            if distributed
            else None
        )
        train_loader = DataLoader(
            train_data,
            batch_size=args.batchsize,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
        )
    val_loader = DataLoader(val_data, batch_size=args.batchsize, num_workers=workers)

    config = ModelConfig.from_options(vars(args))
    model = build_model(config, args.pretrained, args.pretrained_path)
    model = model.to(device, memory_format=torch.channels_last)
    criterion = ReIDLoss(args, args.nclasses, model.feature_dim).to(device)
    optimizer = make_optimizer(model, args, criterion)
    # --wa: an exponential moving average of the weights, updated after every step (BN statistics are
    # recomputed at the end, so only parameters are averaged).
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.wa_decay)) if args.wa else None
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, args)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    history, start_epoch = {"train": [], "val": []}, 0
    if args.resume:
        state = load_checkpoint(run_dir / "checkpoint.pth")
        model.load_state_dict(state["model"])
        criterion.load_state_dict(state.get("criterion", {}))
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_random_states(state["random"][rank] if rank < len(state["random"]) else state["random"][0])
        history, start_epoch = state["history"], state["epoch"] + 1
        logger.info(f"resuming {run_dir} after epoch {state['epoch']}")
    net = model
    if distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if is_main:  # the options, the model configuration, the command line; a resume is added to the history
        history_keys = ("resume", "overwrite", "model", "argv", "resumed")
        opts = {k: v for k, v in vars(args).items() if k not in history_keys}
        opts["model"] = config.to_dict()
        opts["argv"] = args.argv if args.resume else argv
        if args.resume:
            opts["resumed"] = [*getattr(args, "resumed", []), {"argv": argv, "after_epoch": start_epoch - 1}]
        save_yaml(run_dir / "opts.yaml", opts)
    logger.info(
        f"{len(train_data)} training images, {args.nclasses} identities, {len(val_data)} val images; "
        f"{'PCB' if args.PCB else args.backbone} {args.height}x{args.width}, {precision_name(amp_dtype)} on {device}"
        f"{f' x {world} processes' if distributed else ''}"
    )

    for epoch in range(start_epoch, args.total_epoch):
        if sampler is not None:
            sampler.set_epoch(epoch)
        desc = f"{epoch}/{args.total_epoch - 1}"
        lr = scheduler.get_last_lr()[-1]  # the head's lr at the start of the epoch
        train_stats = run_epoch(
            net,
            train_loader,
            device,
            amp_dtype,
            args,
            criterion,
            optimizer,
            scheduler,
            scaler,
            ema,
            desc=desc,
        )
        train_stats = reduce_stats(train_stats, device)
        val_stats = run_epoch(model, val_loader, device, amp_dtype, args, criterion, desc=f"{desc} val")
        history["train"].append(train_stats)
        history["val"].append(val_stats)
        logger.info(
            f"epoch {desc} train loss {train_stats['loss']:.4f}{format_terms(train_stats)} acc {train_stats['acc']:.4f} "
            f"({train_stats['img_s']:.1f} img/s) | val loss {val_stats['loss']:.4f} "
            f"acc {val_stats['acc']:.4f} | lr {lr:.2e}"
        )

        # Every process's random state, so a resumed run continues each one exactly.
        states = [None] * world
        if distributed:
            dist.all_gather_object(states, random_states())
        else:
            states = [random_states()]
        if is_main:
            draw_curves(history, run_dir / "train.jpg")
            if epoch % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1:
                torch_save(model.state_dict(), run_dir / f"net_{epoch:03d}.pth")
            torch_save(model.state_dict(), run_dir / "net_last.pth")
            torch_save(
                {
                    "model": model.state_dict(),
                    "criterion": criterion.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "random": states,
                },
                run_dir / "checkpoint.pth",
            )
            if old_run is not None and old_run.exists():  # the new run has a checkpoint: the old one goes
                shutil.rmtree(old_run)
    if ema is not None:
        # The average's BatchNorm statistics, recomputed over one pass of the training data.
        update_bn(train_loader, ema, device=device)
        if is_main:
            torch_save(ema.module.state_dict(), run_dir / "net_average.pth")
            logger.info(f"weight average (EMA, decay {args.wa_decay}): model/{args.name}/net_average.pth")
    logger.info(f"done: model/{args.name}/net_last.pth")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_main(main)
