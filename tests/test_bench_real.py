"""bench/bench_real.py: options, the skip path, the epoch budget, and a 1-epoch run on a tiny raw tree.

The real benchmark (CUHK01, 30 minutes per model) is far too slow for the suite; the tiny run goes
through the same steps (prepare, calibrate, train, test, both rankings, the table) in seconds.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import train
from utils import UserError, load_yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_real

CUHK01 = ROOT.parent / "shared" / "data" / "cuhk01"


def write_raw_market(root: Path, n_train: int = 10, n_test: int = 4) -> Path:
    """A raw Market-1501 tree shaped like CUHK01: 4 images per id, 2 cameras, one query per test id."""

    rng = np.random.default_rng(0)

    def save(folder, pid, cam, frame):
        path = root / folder / f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        # A colour per identity plus noise: textured images keep the features of a barely trained
        # network apart (identical features have no re-ranking distance: it divides by 0).
        colour = np.array([pid * 20 % 256, 40 * cam, 90])
        pixels = np.clip(colour + rng.integers(-40, 40, size=(24, 12, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)

    for pid in range(1, n_train + 1):
        for frame, cam in enumerate([1, 1, 2, 2]):
            save("bounding_box_train", pid, cam, frame)
    for pid in range(n_train + 1, n_train + n_test + 1):
        save("query", pid, 1, 0)
        for frame, cam in enumerate([1, 2, 2], start=1):
            save("bounding_box_test", pid, cam, frame)
    return root


def calibrated_random_mobilenet_v2() -> dict:
    """Random MobileNetV2 weights in the real file's layout (no classifier), with the BatchNorm
    statistics of one batch of noise: with the default statistics (mean 0, variance 1) the ReLU6
    activations saturate in eval mode and every image gets the same feature."""
    net = torchvision.models.mobilenet_v2()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = the mean over the batches seen
    with torch.no_grad():
        net.train()(torch.randn(8, 3, 64, 32))
    return {k: v for k, v in net.state_dict().items() if not k.startswith("classifier.")}


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_real.main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert "(default: 30)" in out and "(default: mobilenet_v2,resnet50)" in out and "(default: 128)" in out


def test_unknown_model_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_real.main(["--models", "resnet50,vgg"])
    assert exit_info.value.code == 2
    assert "unknown ['vgg']" in capsys.readouterr().err


def test_skips_without_data(tmp_path, capsys):
    assert bench_real.main(["--data_dir", str(tmp_path / "absent")]) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "skipped" in out[0] and "absent" in out[0]


def test_skips_without_weights_only_when_mobilenet_needs_them(tmp_path, capsys):
    raw = write_raw_market(tmp_path / "raw")
    absent = str(tmp_path / "absent.pth")
    assert bench_real.main(["--data_dir", str(raw), "--pretrained_path", absent]) is None
    assert "skipped" in capsys.readouterr().out
    args = bench_real.parse_args(
        ["--data_dir", str(raw), "--pretrained_path", absent, "--models", "resnet50"]
    )
    assert bench_real.missing_input(args) is None


def test_epochs_in_budget():
    assert bench_real.epochs_in_budget(30 * 60, 14.2) == 126
    assert bench_real.epochs_in_budget(10, 5) == 2
    assert bench_real.epochs_in_budget(0, 5) == 1  # at least one epoch


@pytest.mark.skipif(not CUHK01.is_dir(), reason="../shared/data/cuhk01 is absent")
def test_defaults_find_the_shared_data():
    args = bench_real.parse_args([])
    assert Path(args.data_dir) == CUHK01
    if Path(args.pretrained_path).is_file():
        assert bench_real.missing_input(args) is None


def test_rerank_settings(capsys):
    assert bench_real.parse_args([]).rerank == [(20, 6, 0.3), (6, 3, 0.3)]
    args = bench_real.parse_args(["--rerank", "10,4,0.5", "--rerank", "3,1,0"])
    assert args.rerank == [(10, 4, 0.5), (3, 1, 0.0)]
    for bad in ("10,4", "10,12,0.3", "a,b,c", "10,4,1.5"):
        with pytest.raises(SystemExit) as exit_info:
            bench_real.parse_args(["--rerank", bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"--rerank: {bad!r}: give K1,K2,LAMBDA" in err, err


def test_keep_refuses_a_folder_in_use(tmp_path):
    raw = write_raw_market(tmp_path / "raw")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty folder"):
        bench_real.main(["--data_dir", str(raw), "--models", "resnet50", "--keep", str(tmp_path / "work")])
    assert (tmp_path / "work" / "notes.txt").read_text() == "mine"


def test_each_model_trains_with_the_documented_options(tmp_path):
    args = bench_real.parse_args(
        ["--pretrained_path", str(tmp_path / "w.pth"), "--height", "96", "--width", "48"]
    )
    parsed = {
        name: train.parse_args([*bench_real.train_args(name, args, tmp_path), "--total_epoch", "3"])
        for name in args.models
    }
    for opts in parsed.values():
        assert opts.train_all and opts.cosine and opts.erasing_p == 0.5 and opts.warm_epoch == 1
        assert opts.batchsize == 32 and (opts.height, opts.width) == (96, 48) and opts.total_epoch == 3
        assert not opts.bf16 and not opts.fp16 and opts.gpu_ids == "-1" and Path(opts.data_dir) == tmp_path
    mobilenet, resnet = parsed["mobilenet_v2"], parsed["resnet50"]
    assert mobilenet.backbone == "mobilenet_v2" and mobilenet.pretrained
    assert Path(mobilenet.pretrained_path) == tmp_path / "w.pth"
    assert mobilenet.lr == 0.05 and mobilenet.droprate == 0.5  # train.py puts the backbone at 0.1 x lr
    assert resnet.backbone == "resnet50" and not resnet.pretrained and not resnet.pretrained_path
    assert resnet.lr == 0.02 and resnet.droprate == 0.2


def test_tiny_run_prepares_trains_tests_and_reports(tmp_path, capsys):
    # MobileNetV2 only: the small network keeps this fast; the steps are the same for every model.
    raw = write_raw_market(tmp_path / "raw")
    weights = tmp_path / "mobilenet_v2_features.pth"
    torch.save(calibrated_random_mobilenet_v2(), weights)
    work = tmp_path / "work"
    argv = ["--data_dir", str(raw), "--pretrained_path", str(weights), "--budget_minutes", "0",
            "--models", "mobilenet_v2", "--height", "64", "--width", "32", "--keep", str(work)]  # fmt: skip
    (run,) = bench_real.main(argv)
    out = capsys.readouterr().out

    assert run["model"] == "mobilenet_v2" and run["epochs"] == 1  # a budget of 0 still trains 1 epoch
    assert run["sec_per_epoch"] > 0 and run["train_s"] > 0 and run["test_s"] > 0
    assert list(run["rankings"]) == ["none", "k1=20 k2=6 lambda=0.3", "k1=6 k2=3 lambda=0.3"]
    for results in run["rankings"].values():
        assert results["n_query"] == 4 and results["n_gallery"] == 12 and results["n_evaluated"] == 4
        for key in ("rank1", "rank5", "rank10", "mAP_market1501", "mAP", "mINP"):
            assert 0 <= results[key] <= 1
        assert results["mAP_market1501"] <= results["mAP"] + 1e-9
    # Nothing written next to the raw data; the kept folder holds the prepared copies and the run.
    assert sorted(p.name for p in raw.iterdir()) == ["bounding_box_test", "bounding_box_train", "query"]
    assert len(list((work / "pytorch" / "train_all").rglob("*.jpg"))) == 40
    opts = load_yaml(work / "model" / "mobilenet_v2" / "opts.yaml")
    assert opts["total_epoch"] == 1 and Path(opts["pretrained_path"]) == weights
    assert (work / "mobilenet_v2_result.mat").is_file()
    # One table row per ranking, the command and the machine.
    rows = [line for line in out.splitlines() if line.startswith("| mobilenet_v2 |")]
    assert len(rows) == 3 and "| 64x32 | 1 (" in rows[0] and "| none |" in rows[0]
    assert "| k1=20 k2=6 lambda=0.3 |" in rows[1] and "| k1=6 k2=3 lambda=0.3 |" in rows[2]
    assert f"command: python bench/bench_real.py {' '.join(argv)}" in out
    assert "machine: " in out and f"torch {torch.__version__}" in out


def test_strong_runs_are_the_bag_of_tricks_recipe(tmp_path):
    args = bench_real.parse_args(["--pretrained_path", str(tmp_path / "w.pth")])
    classic = train.parse_args([*bench_real.train_args("mobilenet_v2", args, tmp_path), "--total_epoch", "3"])
    for name, lr in (("mobilenet_v2_strong", 0.00035), ("osnet_x1_0_strong", 0.0015)):
        opts = train.parse_args([*bench_real.train_args(name, args, tmp_path), "--total_epoch", "3"])
        assert opts.sampler == "pk" and opts.num_instances == 4 and opts.neck == "bnneck" and opts.stride == 1
        assert opts.label_smoothing == 0.1 and opts.triplet and opts.center and opts.batchsize == 64
        assert opts.optimizer == "adam" and opts.backbone_lr == 1 and opts.lr == lr  # every layer at lr
        same = ["train_all", "erasing_p", "warm_epoch", "cosine", "height", "width"]
        assert all(getattr(opts, key) == getattr(classic, key) for key in same)
    mobilenet = train.parse_args(bench_real.train_args("mobilenet_v2_strong", args, tmp_path))
    assert mobilenet.backbone == "mobilenet_v2" and Path(mobilenet.pretrained_path) == tmp_path / "w.pth"
    osnet = train.parse_args(bench_real.train_args("osnet_x1_0_strong", args, tmp_path))
    assert osnet.backbone == "osnet_x1_0" and not osnet.pretrained and not osnet.pretrained_path
    # OSNet trains from scratch: the MobileNetV2 weights are not needed for it
    only_osnet = bench_real.parse_args(
        ["--pretrained_path", str(tmp_path / "absent.pth"), "--models", "osnet_x1_0_strong"]
    )
    assert not bench_real.uses_weights("osnet_x1_0_strong") and bench_real.uses_weights("mobilenet_v2_strong")
    assert bench_real.missing_input(only_osnet) is None or "CUHK01" in bench_real.missing_input(only_osnet)


def test_tiny_run_of_the_strong_recipe_from_scratch(tmp_path, capsys):
    raw = write_raw_market(tmp_path / "raw", n_train=16)  # one batch of the recipe's 16 ids x 4 images
    work = tmp_path / "work"
    argv = ["--data_dir", str(raw), "--budget_minutes", "0", "--models", "osnet_x1_0_strong", "--height", "64",
            "--width", "32", "--keep", str(work), "--rerank", "6,3,0.3"]  # fmt: skip
    (run,) = bench_real.main(argv)
    assert run["model"] == "osnet_x1_0_strong" and run["epochs"] == 1
    assert 0 <= run["rankings"]["none"]["mAP"] <= 1
    opts = load_yaml(work / "model" / "osnet_x1_0_strong" / "opts.yaml")
    assert (
        opts["sampler"] == "pk"
        and opts["model"]["neck"] == "bnneck"
        and opts["model"]["backbone"] == "osnet_x1_0"
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| osnet_x1_0_strong |")]
    assert len(rows) == 2 and "| scratch, strong recipe | 64x32 |" in rows[0]
