"""train.py and random_erasing.py on tiny data: backbones, options, the strong recipe, resume, DDP, bad input."""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import test as extract  # our test.py
import train
import utils
from features import load_features
from model import CLASSIC_BACKBONE_FLAGS, ModelConfig, build_model, load_trained_model
from random_erasing import RandomErasing
from utils import UserError, load_yaml, save_yaml

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--no-pretrained", "--gpu_ids", "-1", "--height", "64", "--width", "32", "--batchsize", "4"]


def run_train(data, name, *extra):
    train.main(["--name", name, "--data_dir", str(data), *FAST, *extra])
    return Path("model") / name


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# Every row builds, trains a step and round-trips in test_model.py; a whole train.py run for a few, one
# of each kind of backbone: torchvision, written here, timm.
@pytest.mark.parametrize(
    "backbone", ["resnet18", "densenet121", "osnet_x0_25", "resnet50_ibn_a", "timm:resnet10t"]
)
def test_one_epoch_each_backbone(tiny_prepared, workdir, backbone):
    name = backbone.replace(":", "_")
    run_dir = run_train(tiny_prepared, name, "--backbone", backbone, "--total_epoch", "1")
    assert (run_dir / "net_last.pth").is_file()
    _, config = load_trained_model(run_dir)  # strict load through build_model
    assert config.backbone == backbone and config.nclasses == 4
    opts = load_yaml(run_dir / "opts.yaml")
    assert opts["argv"][:2] == ["--name", name] and opts["model"] == config.to_dict()


def test_pcb_epoch_and_round_trip(tiny_prepared, workdir):
    run_dir = run_train(
        tiny_prepared, "pcb", "--PCB", "--total_epoch", "1", "--height", "96", "--width", "48"
    )
    model, config = load_trained_model(run_dir)
    assert config.PCB and type(model).__name__ == "PCB"


def test_pcb_default_input_size():
    args = train.parse_args(["--PCB"])
    assert (args.height, args.width) == (384, 192)
    args = train.parse_args([])
    assert (args.height, args.width) == (256, 128)


def test_outputs_checkpoints_and_curves(tiny_prepared, workdir):
    run_dir = run_train(tiny_prepared, "run", "--total_epoch", "10", "--train_all", "--erasing_p", "0.5",
                        "--color_jitter", "--cosine", "--warm_epoch", "2", "--stride", "1",
                        "--droprate", "0.2", "--linear_num", "64")  # fmt: skip
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["checkpoint.pth", "net_009.pth", "net_last.pth", "opts.yaml", "train.jpg", "train.log"]
    with Image.open(run_dir / "train.jpg") as img:
        assert img.size[0] > 300 and img.size[1] > 100
    log = (run_dir / "train.log").read_text()
    assert log.count("train loss") == 10
    model, config = load_trained_model(run_dir, "9")
    assert config.linear_num == 64 and config.stride == 1 and load_yaml(run_dir / "opts.yaml")["train_all"]
    assert model.classifier.embedding_dim == 64
    # net_009 and net_last are the same weights after 10 epochs
    a = torch.load(run_dir / "net_009.pth", weights_only=True)
    b = torch.load(run_dir / "net_last.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_schedule_warm_up_and_decay():
    args = train.parse_args(["--total_epoch", "6", "--warm_epoch", "2", "--lr", "0.1"])
    steps = 10  # per epoch
    assert train.lr_factor(0, steps, args) == pytest.approx(0.1)
    assert train.lr_factor(10, steps, args) == pytest.approx(0.1 + 0.9 * 10 / 20)
    assert train.lr_factor(20, steps, args) == 1.0
    assert train.lr_factor(39, steps, args) == 1.0  # epoch 3 < 2/3 * 6
    assert train.lr_factor(40, steps, args) == pytest.approx(0.1)  # epoch 4: x0.1
    cosine = train.parse_args(["--total_epoch", "4", "--cosine"])
    assert [train.lr_factor(e * 10, steps, cosine) for e in range(4)] == pytest.approx(
        [1.0, 0.01 + 0.99 * 0.5 * (1 + 2**-0.5), 0.01 + 0.99 * 0.5, 0.01 + 0.99 * 0.5 * (1 - 2**-0.5)]
    )


def test_optimizer_pretrained_backbone_at_tenth_of_lr():
    args = train.parse_args(["--lr", "0.2", "--backbone", "resnet18"])
    net = build_model(ModelConfig.from_options({**vars(args), "nclasses": 3}))
    groups = train.make_optimizer(net, args).param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.02, 0.2])
    scratch = train.parse_args(["--lr", "0.2", "--backbone", "resnet18", "--no-pretrained"])
    assert [g["lr"] for g in train.make_optimizer(net, scratch).param_groups] == pytest.approx([0.2, 0.2])
    assert groups[0]["nesterov"] and groups[0]["momentum"] == 0.9
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    bot = train.parse_args(
        ["--lr", "0.00035", "--optimizer", "adam", "--backbone_lr", "1", "--backbone", "resnet18"]
    )
    adam = train.make_optimizer(net, bot)
    assert isinstance(adam, torch.optim.Adam) and [g["lr"] for g in adam.param_groups] == pytest.approx(
        [0.00035] * 2
    )


def test_random_erasing():
    img = torch.randn(3, 64, 32)
    assert torch.equal(RandomErasing(p=0)(img), img)
    erased = RandomErasing(p=1)(img)
    changed = (erased != img).any(dim=0)
    assert changed.any() and (erased[:, changed] == 0).all()
    assert changed.sum() >= 0.02 * 64 * 32 * 0.5  # a rectangle of at least ~sl of the area
    with pytest.raises(ValueError):
        RandomErasing(p=2)


STRONG = ["--sampler", "pk", "--num_instances", "2", "--neck", "bnneck", "--stride", "1", "--label_smoothing", "0.1",
          "--triplet", "--center", "--arcface", "--wa"]  # fmt: skip


@pytest.mark.parametrize("recipe", [[], [*STRONG, "--backbone", "resnet18"]], ids=["classic", "strong"])
def test_resume_equals_uninterrupted_run(tiny_prepared, workdir, monkeypatch, recipe):
    # strong: the PK sampler's order, the loss's own weights and centers, the weight average continue too
    args = ["--total_epoch", "4", "--erasing_p", "0.5", "--seed", "3", *recipe]
    full = run_train(tiny_prepared, "full", *args)

    real_run_epoch = train.run_epoch

    def killed_in_epoch_2(*a, **kw):
        desc = kw.get("desc") or a[8]  # "epoch/last epoch"
        if desc.startswith("2/"):
            raise KeyboardInterrupt
        return real_run_epoch(*a, **kw)

    monkeypatch.setattr(train, "run_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_train(tiny_prepared, "killed", *args)
    monkeypatch.setattr(train, "run_epoch", real_run_epoch)
    killed = run_train(tiny_prepared, "killed", *args, "--resume")
    for name in ["net_last.pth"] + (["net_average.pth"] if recipe else []):
        a = torch.load(full / name, weights_only=True)
        b = torch.load(killed / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (killed / "train.log").read_text().count("resuming") == 1


def test_refuses_to_mix_runs(tiny_prepared, workdir):
    run_train(tiny_prepared, "once", "--total_epoch", "1")
    with pytest.raises(UserError, match="holds another run.*--resume.*--overwrite"):
        run_train(tiny_prepared, "once", "--total_epoch", "1")
    run_train(tiny_prepared, "once", "--total_epoch", "2", "--overwrite")
    assert (Path("model/once/train.log")).read_text().count("train loss") == 2
    with pytest.raises(UserError, match="nothing to resume"):
        run_train(tiny_prepared, "fresh", "--resume")
    Path("model/other").mkdir()
    Path("model/other/notes.txt").write_text("mine")
    with pytest.raises(UserError, match="no training run"):
        run_train(tiny_prepared, "other", "--overwrite")
    assert Path("model/other/notes.txt").read_text() == "mine"


def test_a_run_that_stopped_on_bad_data_can_start_again(tiny_prepared, workdir, tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        run_train(tmp_path / "typo", "again")
    run_dir = run_train(tiny_prepared, "again", "--total_epoch", "1")
    assert (run_dir / "net_last.pth").is_file()


def test_bad_data(tiny_prepared, workdir, tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        run_train(tmp_path / "absent", "a")
    with pytest.raises(UserError, match="fewer than one batch"):
        run_train(tiny_prepared, "b", "--batchsize", "64")
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(UserError, match="no images"):
        run_train(empty, "c")


def test_corrupt_image_is_named(tiny_prepared, workdir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_prepared, data)
    bad = next((data / "train").rglob("*.jpg"))
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=bad.name):
        run_train(data, "corrupt", "--total_epoch", "1")


def test_nan_loss_stops_and_keeps_last_checkpoint(tiny_prepared, workdir, monkeypatch):
    real = train.loss_and_correct
    calls = {"n": 0}

    def nan_after_first_epoch(criterion, outputs, labels):
        loss, terms, correct = real(criterion, outputs, labels)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 3 else loss), terms, correct

    monkeypatch.setattr(train, "loss_and_correct", nan_after_first_epoch)
    with pytest.raises(UserError, match="loss became nan"):
        run_train(tiny_prepared, "nan", "--total_epoch", "3")
    assert torch.load(Path("model/nan/checkpoint.pth"), weights_only=False)["epoch"] == 0


def test_fp16_on_cpu_runs_bf16(tiny_prepared, workdir):
    run_dir = run_train(tiny_prepared, "half", "--total_epoch", "1", "--fp16", "--backbone", "resnet18")
    log = (run_dir / "train.log").read_text()
    assert "runs in bfloat16" in log and "bfloat16 on cpu" in log


def test_bf16(tiny_prepared, workdir):
    run_dir = run_train(tiny_prepared, "bf16", "--total_epoch", "1", "--bf16")
    assert "bfloat16 on cpu" in (run_dir / "train.log").read_text()


def test_two_process_gloo_run(tiny_prepared, workdir):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           str(ROOT / "train.py"), "--name", "ddp", "--data_dir", str(tiny_prepared), *FAST,
           "--total_epoch", "2", "--batchsize", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (workdir / "model/ddp/train.log").read_text()
    assert "x 2 processes" in log and log.count("train loss") == 2  # only rank 0 writes
    load_trained_model(workdir / "model/ddp")
    # Each process draws its own augmentation randomness, and both states are kept for --resume.
    states = torch.load(workdir / "model/ddp/checkpoint.pth", weights_only=False)["random"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])


def test_two_process_run_with_the_pk_sampler_and_metric_losses(tiny_prepared, workdir):
    # Each process its own 2 identities x 2 images; ArcFace's weights averaged over the processes.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29532",
           str(ROOT / "train.py"), "--name", "ddp_pk", "--data_dir", str(tiny_prepared), *FAST,
           "--total_epoch", "1", "--sampler", "pk", "--num_instances", "2", "--triplet", "--arcface", "--center",
           "--backbone", "resnet18"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (workdir / "model/ddp_pk/train.log").read_text()
    assert "x 2 processes" in log and "triplet" in log and "arcface" in log


def test_strong_recipe_writes_a_weight_average_that_test_py_loads(tiny_prepared, workdir):
    run_dir = run_train(tiny_prepared, "strong", "--backbone", "resnet18", "--total_epoch", "2", "--warm_epoch", "1",
                        "--steps", "1", "--optimizer", "adam", "--lr", "0.00035", "--pool", "gem", *STRONG)  # fmt: skip
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pth", "net_average.pth", "net_last.pth",
                                                         "opts.yaml", "train.jpg", "train.log"]  # fmt: skip
    log = (run_dir / "train.log").read_text()
    assert re.search(
        r"train loss \d+\.\d+ \(id \d+\.\d+ triplet \d+\.\d+ arcface \d+\.\d+ center \d+\.\d+\)", log
    )
    assert "weight average (EMA, decay 0.999)" in log
    config = load_trained_model(run_dir)[1]
    assert (config.neck, config.pool, config.stride, config.linear_num) == ("bnneck", "gem", 1, 0)
    last = torch.load(run_dir / "net_last.pth", weights_only=True)
    average = torch.load(run_dir / "net_average.pth", weights_only=True)
    assert last.keys() == average.keys()
    assert not torch.equal(last["backbone.0.weight"], average["backbone.0.weight"])
    assert not torch.equal(
        last["classifier.bn.running_mean"], average["classifier.bn.running_mean"]
    )  # recomputed
    extract.main(
        ["--name", "strong", "--test_dir", str(tiny_prepared), "--gpu_ids", "-1", "--which_epoch", "average"]
    )
    feats = load_features("pytorch_result.mat")
    assert feats["query_f"].shape == (4, 512) and feats["model"].endswith("epoch average")
    state = torch.load(run_dir / "checkpoint.pth", weights_only=False)
    assert state["criterion"]["terms.center.centers"].shape == (4, 512) and state["ema"]["n_averaged"] == 4


def test_every_metric_loss_in_one_run(tiny_prepared, workdir):
    flags = ["--triplet", "--circle", "--arcface", "--cosface", "--sphere", "--contrast", "--lifted", "--instance",
             "--center"]  # fmt: skip
    run_dir = run_train(tiny_prepared, "losses", "--backbone", "resnet18", "--total_epoch", "1", "--sampler", "pk",
                        "--num_instances", "2", *flags)  # fmt: skip
    line = next(line for line in (run_dir / "train.log").read_text().splitlines() if "train loss" in line)
    assert all(f" {flag[2:]} " in line for flag in flags), line


def test_optimizers_and_step_schedule():
    net = build_model(ModelConfig(nclasses=3, backbone="resnet18", neck="bnneck"))
    for name, cls in [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]:
        args = train.parse_args(["--optimizer", name, "--lr", "0.001", "--no-pretrained", "--arcface"])
        criterion = train.ReIDLoss(args, 3, net.feature_dim)
        optimizer = train.make_optimizer(net, args, criterion)
        assert type(optimizer) is cls and [g["lr"] for g in optimizer.param_groups] == [0.001, 0.001]
        head = {id(p) for p in optimizer.param_groups[1]["params"]}
        assert id(criterion.terms["arcface"].W) in head and id(net.classifier.bn.bias) not in head  # frozen
    args = train.parse_args(["--total_epoch", "120", "--warm_epoch", "10", "--steps", "70,40"])
    assert args.steps == [40, 70]
    factors = [train.lr_factor(epoch * 10, 10, args) for epoch in (0, 10, 39, 40, 69, 70, 119)]
    assert factors == pytest.approx([0.1, 1, 1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "40,x"], "--steps '40,x': give comma-separated epochs"),
        (["--steps", "40", "--cosine"], "--steps and --cosine are two decay schedules"),
        (["--sampler", "pk", "--batchsize", "30"], "--batchsize 30 must be a multiple of --num_instances 4"),
        (["--sampler", "pk", "--batchsize", "4"], "needs at least 2 identities per batch"),
        (["--wa_decay", "1"], "--wa_decay must be between 0 and 1"),
        (["--label_smoothing", "-0.1"], "--label_smoothing must be in"),
        (["--use_swin", "--stride", "1"], "swin_base_patch4_window7_224 has no last-stride switch"),
        (["--DG"], "--DG: downloads the 128,307-image DG-Market set"),
        (["--use_NAS"], "--use_NAS: .*use --backbone timm:nasnetalarge"),
        (["--FSGD"], "--FSGD: apex's fused SGD is not needed"),
        (["--usam"], "--usam: USAM"),
        (["--adv", "0.1", "--aiter", "40"], "--adv: adversarial query training"),
    ],
)
def test_bad_and_unsupported_options_stop_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(message, error), error


def test_classic_backbone_and_loss_flags():
    for flag, backbone in CLASSIC_BACKBONE_FLAGS.items():
        assert train.parse_args([flag]).backbone == backbone
    args = train.parse_args(["--use_swin"])
    assert (args.height, args.width) == (224, 224)  # the classic's Swin input
    assert (train.parse_args(["--use_swinv2"]).height, train.parse_args(["--use_dino"]).width) == (256, 128)
    # Classic command lines, verbatim: abbreviations (--batch, --total, --warm) and the loss options.
    args = train.parse_args(["--warm_epoch", "5", "--stride", "1", "--erasing_p", "0.5", "--batchsize", "32", "--lr", "0.08", "--name", "x", "--instance", "--ins_gamma", "64", "--total", "100"])  # fmt: skip
    assert args.instance and args.ins_gamma == 64 and args.total_epoch == 100
    args = train.parse_args(
        [
            "--use_hr",
            "--name",
            "hr",
            "--lr",
            "0.01",
            "--batch",
            "16",
            "--erasing_p",
            "0.5",
            "--circle",
            "--warm",
            "5",
        ]
    )
    assert args.backbone == "hrnet_w18" and args.batchsize == 16 and args.circle and args.warm_epoch == 5
    args = train.parse_args(
        [
            "--contrast",
            "--sphere",
            "--triplet",
            "--lifted",
            "--arcface",
            "--cosface",
            "--wa",
            "--workers",
            "2",
        ]
    )
    assert args.contrast and args.sphere and args.triplet and args.lifted and args.arcface and args.cosface
    assert args.wa and args.num_workers == 2


def test_help():
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--help"], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in [
        "--use_dense",
        "--PCB",
        "--fp16",
        "--bf16",
        "--warm_epoch",
        "--resume",
        "(default: 0.05)",
        "--use_swin",
        "--ibn",
        "--sampler",
        "--neck",
        "--triplet",
        "--label_smoothing",
        "--wa",
    ]:
        assert option in text


@pytest.mark.parametrize("native", [True, False])
def test_bf16_warns_on_a_cpu_without_bfloat16(monkeypatch, native):
    import logging

    import utils

    monkeypatch.setattr(utils, "cpu_has_bfloat16", lambda: native)
    records = []
    logger = logging.getLogger("bf16-check")
    monkeypatch.setattr(logger, "warning", records.append)
    args = train.parse_args(["--bf16"])
    assert utils.run_precision(args, torch.device("cpu"), logger) == torch.bfloat16
    assert any("no bfloat16 instructions" in r for r in records) == (not native)


def test_workers_progress_and_weight_decay(tiny_prepared, workdir, capfd):
    run_dir = run_train(tiny_prepared, "opts", "--total_epoch", "1", "--num_workers", "1", "--progress",
                        "--weight_decay", "0.01")  # fmt: skip
    assert "0/0" in capfd.readouterr().err  # tqdm's bar for epoch 0 of 0..0
    args = train.parse_args(["--weight_decay", "0.01"])
    net = build_model(ModelConfig.from_options({**vars(args), "nclasses": 3}))
    assert all(g["weight_decay"] == 0.01 for g in train.make_optimizer(net, args).param_groups)
    assert load_yaml(run_dir / "opts.yaml")["num_workers"] == 1


def test_select_device(monkeypatch):
    import logging

    import utils

    records = []
    logger = logging.getLogger("device-check")
    monkeypatch.setattr(logger, "warning", records.append)
    assert utils.select_device("-1", logger).type == "cpu" and not records
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert utils.select_device("0", logger).type == "cpu" and "CUDA is not available" in records[-1]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert utils.select_device("1,0", logger) == torch.device("cuda", 1) and "torchrun" in records[-1]
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert utils.select_device("0", logger) == torch.device("cuda", 1)  # one GPU per torchrun process


# ----------------------------------------------------------------------------------------------------
# The run folder: never lost, never mixed up.


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_second_train_on_the_same_name_stops_while_the_first_runs(tiny_prepared, workdir):
    # Another process holds the run's lock (as a running train.py does): a second one stops at once.
    hold = (
        "import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import train\n"
        "with train.run_lock(Path('model/busy')):\n    print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            UserError, match=rf"model/busy is being trained by another train.py \(process {holder.pid}\)"
        ):
            run_train(tiny_prepared, "busy", "--total_epoch", "1")
        assert not Path("model/busy").exists()
    finally:
        holder.kill()  # killed, not ended cleanly: the kernel drops the lock all the same
        holder.wait()
    run_train(tiny_prepared, "busy", "--total_epoch", "1")
    assert Path("model/busy/net_last.pth").is_file()


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(
    tiny_prepared, workdir, tmp_path, monkeypatch
):
    run_dir = run_train(tiny_prepared, "kept", "--total_epoch", "1")
    before = snapshot(run_dir)
    # A start-up failure (a mistyped --data_dir): the old run is back, byte for byte.
    with pytest.raises(UserError, match="no such folder"):
        run_train(tmp_path / "typo", "kept", "--overwrite")
    assert snapshot(run_dir) == before
    # A failure in the first epoch, and Ctrl-C there: the same.
    real = train.run_epoch

    def failing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run_epoch", failing)
    with pytest.raises(KeyboardInterrupt, match=r"the earlier run in model/kept is back in place"):
        run_train(tiny_prepared, "kept", "--total_epoch", "2", "--overwrite")
    assert snapshot(run_dir) == before
    monkeypatch.setattr(train, "run_epoch", real)
    # Success: the new run replaces the old one, and nothing of the old one is left.
    run_train(tiny_prepared, "kept", "--total_epoch", "2", "--overwrite")
    assert (run_dir / "train.log").read_text().count("train loss") == 2
    assert [p.name for p in Path("model").iterdir() if not p.name.endswith(".lock")] == ["kept"]


def test_a_run_stopped_in_its_first_epoch_starts_again(tiny_prepared, workdir, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    real = train.run_epoch
    monkeypatch.setattr(train, "run_epoch", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        utils.run_main(
            train.main, ["--name", "first", "--data_dir", str(tiny_prepared), *FAST, "--total_epoch", "1"]
        )
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == (
        "interrupted: model/first stopped before its first checkpoint; start it again with the same command\n"
    )
    monkeypatch.setattr(train, "run_epoch", real)
    run_dir = run_train(tiny_prepared, "first", "--total_epoch", "1")  # no --overwrite needed
    assert (run_dir / "net_last.pth").is_file()


def test_ctrl_c_after_a_checkpoint_says_how_to_resume(tiny_prepared, workdir, monkeypatch, capsys):
    real = train.run_epoch

    def interrupted_in_epoch_1(*args, **kwargs):
        if (kwargs.get("desc") or args[8]).startswith("1/"):
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "run_epoch", interrupted_in_epoch_1)
    with pytest.raises(SystemExit):
        utils.run_main(
            train.main, ["--name", "ctrl", "--data_dir", str(tiny_prepared), *FAST, "--total_epoch", "2"]
        )
    assert capsys.readouterr().err == (
        "interrupted: model/ctrl is kept after epoch 0; continue it with: python train.py --name ctrl --resume\n"
    )


def test_resume_refuses_other_options_and_may_extend_the_run(tiny_prepared, workdir):
    run_dir = run_train(tiny_prepared, "res", "--total_epoch", "1", "--lr", "0.02")
    for extra, named in (
        (["--lr", "0.001"], "--lr"),
        (["--backbone", "resnet34", "--bf16"], "--backbone, --bf16"),
    ):
        with pytest.raises(UserError, match=rf"model/res was trained with other {named}: --resume continues"):
            train.main(["--name", "res", "--resume", *extra])
    train.main(["--name", "res", "--resume", "--total_epoch", "3", "--lr", "0.02"])  # the same lr is fine
    assert (run_dir / "train.log").read_text().count("train loss") == 3
    opts = load_yaml(run_dir / "opts.yaml")
    assert opts["total_epoch"] == 3 and opts["lr"] == 0.02
    assert opts["argv"][:2] == ["--name", "res"] and "--resume" not in opts["argv"]  # the original command
    assert opts["resumed"] == [
        {"argv": ["--name", "res", "--resume", "--total_epoch", "3", "--lr", "0.02"], "after_epoch": 0}
    ]
    with pytest.raises(UserError, match="--total_epoch 2: model/res has already trained 3 epochs"):
        train.main(["--name", "res", "--resume", "--total_epoch", "2"])


def test_damaged_or_edited_files_are_one_line_errors(tiny_prepared, workdir):
    run_dir = run_train(tiny_prepared, "damaged", "--total_epoch", "1")
    opts_text = (run_dir / "opts.yaml").read_text()
    (run_dir / "checkpoint.pth").write_bytes((run_dir / "checkpoint.pth").read_bytes()[:5000])
    with pytest.raises(UserError, match=r"checkpoint.pth: cannot read it .* the file is damaged"):
        train.main(["--name", "damaged", "--resume"])
    (run_dir / "opts.yaml").write_text("lr: [0.1\n")
    with pytest.raises(UserError, match=r"opts.yaml: not valid YAML"):
        load_trained_model(run_dir)
    (run_dir / "opts.yaml").write_text(opts_text.replace("linear_num: 512", "linear_num: 256"))
    with pytest.raises(
        UserError, match=r"net_last.pth does not fit the model of .*opts.yaml \(.*size mismatch"
    ):
        load_trained_model(run_dir)
    (run_dir / "opts.yaml").write_text(opts_text.replace("  linear_num: 512\n", ""))
    with pytest.raises(UserError, match=r"opts.yaml: missing key 'linear_num' in the model configuration"):
        load_trained_model(run_dir)
    (run_dir / "opts.yaml").write_text(opts_text)
    (run_dir / "net_last.pth").write_bytes(b"")
    with pytest.raises(UserError, match=r"net_last.pth: cannot read it"):
        load_trained_model(run_dir)
    with pytest.raises(
        UserError, match=r"--which_epoch 'best' is not an epoch number, last or average; .*one of: last"
    ):
        load_trained_model(run_dir, "best")


def test_a_full_disk_is_named_at_the_first_checkpoint(tiny_prepared, workdir, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(
        UserError, match=r"cannot write model/full/net_last.pth: the disk is full: free some space"
    ):
        run_train(tiny_prepared, "full", "--total_epoch", "1")
    assert not [p for p in Path("model/full").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_random_states_restore_from_the_gpu():
    states = train.random_states()
    expected = torch.rand(3)
    moved = {**states, "torch": states["torch"].cuda(), "cuda": [s.cuda() for s in states["cuda"]]}
    train.set_random_states(moved)
    assert torch.equal(torch.rand(3), expected)


def test_every_classic_train_command_of_the_readme_parses_verbatim():
    """The classic toolkit's published command lines (the README's results) run here as they are."""
    results = (ROOT / "README.md").read_text().split("## Results")[1]
    commands = re.findall(r"`python train\.py([^`;]*)[`;]", results)
    assert len(commands) >= 20
    for command in commands:
        train.parse_args(command.split())  # exits with status 2 on an unknown option


def test_a_run_saved_before_the_strong_options_resumes(tiny_prepared, workdir, monkeypatch):
    real_run_epoch = train.run_epoch

    def killed_in_epoch_1(*a, **kw):
        if kw.get("desc", "").startswith("1/"):
            raise KeyboardInterrupt
        return real_run_epoch(*a, **kw)

    monkeypatch.setattr(train, "run_epoch", killed_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run_train(tiny_prepared, "old", "--backbone", "resnet18", "--total_epoch", "2")
    monkeypatch.setattr(train, "run_epoch", real_run_epoch)
    # As an older train.py wrote them: none of the new options, no loss or average state.
    opts = load_yaml(Path("model/old/opts.yaml"))
    for key in ["sampler", "num_instances", "optimizer", "steps", "wa", "wa_decay", "label_smoothing", "triplet",
                "triplet_weight", "center", "neck", "pool"]:  # fmt: skip
        opts.pop(key)
    for key in ["neck", "pool"]:
        opts["model"].pop(key)
    save_yaml(Path("model/old/opts.yaml"), opts)
    state = torch.load("model/old/checkpoint.pth", weights_only=False)
    del state["criterion"], state["ema"]
    torch.save(state, "model/old/checkpoint.pth")
    run_train(tiny_prepared, "old", "--resume")
    assert Path("model/old/train.log").read_text().count("train loss") == 2
