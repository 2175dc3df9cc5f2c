"""The classic toolkit's README command sequence, verbatim, on a tiny Market-1501 in `../Market`.

A user of Person_reID_baseline_pytorch types these commands in this order (its README); each must
run here and print or write what the classic one does. The dataset is tiny (32x16 images) but has
780 queries, so `demo.py --query_index 777` exists, and 100 training images, so `--batchsize 64`
fits. Training is shortened only by adding options (input size, no ImageNet download, and
`--total_epoch 1` except for the first run, whose epoch 59 `test.py --which_epoch 59` loads); no
classic option is removed. The README's classic block is this list, word for word.
"""

import importlib
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from features import load_features
from utils import UserError, load_yaml

ROOT = Path(__file__).resolve().parents[1]

CLASSIC = [
    "python prepare.py",
    "python train.py --gpu_ids 0 --name ft_ResNet50 --train_all --batchsize 32 --data_dir ../Market/pytorch",
    "python test.py --gpu_ids 0 --name ft_ResNet50 --test_dir ../Market/pytorch --batchsize 32 --which_epoch 59",
    "python evaluate.py",
    "python evaluate_gpu.py",
    "python evaluate_rerank.py",
    "python demo.py --query_index 777",
    "python train.py --fp16",
    "python train.py --PCB --batchsize 64 --name PCB-64",
    "python test.py --PCB --name PCB-64",
    "python train.py --name ft_net_dense --use_dense --train_all",
    "python test.py --multi",
    "python evaluate_gpu.py",
    "python test.py --ms 1,0.9",
]
SMALL = ["--height", "64", "--width", "32", "--no-pretrained"]
N_TRAIN_IDS, TRAIN_IMAGES, N_TEST_IDS = 20, 5, 390


def write_market(root: Path) -> None:
    """Raw Market-1501 layout: 20 training ids x 5 images (cameras 1, 2), 390 test ids, each with a
    query and a multi-query image in cameras 1 and 2 and gallery images in cameras 3 and 4; junk
    and distractors. Each identity has its own colour, so the model has something to learn."""
    rng = np.random.default_rng(0)

    def save(folder, pid, cam, frame):
        colour = np.random.default_rng(max(pid, 0) + 1000).integers(0, 256, 3)
        pixels = np.clip(colour + rng.integers(-25, 25, (32, 16, 3)), 0, 255).astype(np.uint8)
        path = root / folder / f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg".replace("-001", "-1")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)

    for pid in range(1, N_TRAIN_IDS + 1):
        for k in range(TRAIN_IMAGES):
            save("bounding_box_train", pid, 1 + k % 2, k)
    for pid in range(N_TRAIN_IDS + 1, N_TRAIN_IDS + N_TEST_IDS + 1):
        for cam in (1, 2):
            save("query", pid, cam, 100)
            save("gt_bbox", pid, cam, 100)
            save("gt_bbox", pid, cam, 101)
        for cam in (3, 4):
            save("bounding_box_test", pid, cam, 200)
    for frame in range(3):
        save("bounding_box_test", -1, 1, 300 + frame)  # junk
        save("bounding_box_test", 0, 2, 400 + frame)  # distractors


def shortened(index: int, argv: list[str]) -> list[str]:
    """The classic command's options, plus what keeps it short here (appended: argparse takes the last)."""
    if argv[0] != "train.py":
        return argv[1:]
    extra = SMALL if index == 1 else [*SMALL, "--total_epoch", "1"]
    if "--PCB" in argv:
        extra = [*extra, "--height", "96", "--width", "48"]  # six part stripes need some height
    return argv[1:] + extra


def run(argv: list[str]):
    return importlib.import_module(Path(argv[0]).stem).main


@pytest.fixture
def classic(tmp_path, monkeypatch):
    write_market(tmp_path / "Market")
    work = tmp_path / "Person_reID_baseline"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_the_readme_block_is_the_classic_sequence():
    text = (ROOT / "README.md").read_text()
    block = re.findall(r"```bash\n(.*?)```", text.split("## The classic flow on Market-1501")[1], re.DOTALL)[
        0
    ]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == CLASSIC


def test_classic_sequence(classic, capsys):
    prepared = classic.parent / "Market/pytorch"
    results = classic / "pytorch_result.mat"

    def check(index: int, out: str, returned) -> None:
        """What the command CLASSIC[index] must print or write."""
        if index == 0:  # prepare.py: ../Market -> ../Market/pytorch
            assert (prepared / "dataset.yaml").is_file()
            assert len(list((prepared / "query").rglob("*.jpg"))) == 2 * N_TEST_IDS == 780
        elif index == 1:  # 60 epochs by default, a checkpoint every 10: epoch 59 exists for test.py
            log = (classic / "model/ft_ResNet50/train.log").read_text()
            assert log.count("train loss") == 60 and "100 training images, 20 identities" in log
            assert (classic / "model/ft_ResNet50/net_059.pth").is_file()
            assert "CUDA is not available, running on the CPU" in out
        elif index == 2:  # pytorch_result.mat, named after the model and epoch
            feats = load_features(results)
            assert feats["query_f"].shape == (780, 512) and feats["model"] == "model/ft_ResNet50 epoch 59"
        elif index in (3, 4, 5):  # the classic result line
            assert re.search(
                r"^Rank@1:\d\.\d{4} Rank@5:\d\.\d{4} Rank@10:\d\.\d{4} mAP:\d\.\d{4}$", out, re.MULTILINE
            )
            assert [r["protocol"] for r in returned] == ["single-query"]
            if index == 4:  # the same metric on torch's distances: near ties may round the other way
                for name in ("rank1", "mAP"):
                    assert abs(returned[0][name] - first_results[0][name]) < 0.01, name
            if index == 5:
                assert returned[0]["distance"].startswith("k-reciprocal re-ranking (k1=20, k2=6")
        elif index == 6:
            assert "query 777" in out and (classic / "demo.png").is_file()
        elif index == 7:  # --fp16 on a CPU: bfloat16, and it says so
            assert "runs in bfloat16" in out and "bfloat16 on cpu" in out
        elif index == 8:
            assert load_yaml(classic / "model/PCB-64/opts.yaml")["model"]["PCB"] is True
        elif index == 9:  # six 2048-d parts
            assert load_features(results)["query_f"].shape == (780, 6 * 2048)
        elif index == 10:
            assert load_yaml(classic / "model/ft_net_dense/opts.yaml")["model"]["backbone"] == "densenet121"
        elif index == 11:
            assert load_features(results)["mquery_f"].shape == (4 * N_TEST_IDS, 512)
        elif index == 12:  # after test.py --multi: the single-query result, then the multi-query one
            headers = [
                line for line in out.splitlines() if line.startswith("pytorch_result.mat: 780 queries")
            ]
            assert [h.split(", ")[1].split(" (")[0] for h in headers] == ["single-query", "multi-query"]
            assert [r["protocol"] for r in returned] == ["single-query", "multi-query"]
        elif index == 13:
            feats = load_features(results)
            assert feats["query_f"].shape == (780, 512) and "mquery_f" not in feats

    first_results = None
    for index, line in enumerate(CLASSIC):
        argv = shlex.split(line)[1:]
        if line == "python train.py --fp16":
            # The classic overwrites model/ft_ResNet50 without a word; here the trained run is kept.
            with pytest.raises(UserError, match=r"model/ft_ResNet50 holds another run: .*--overwrite"):
                run(argv)(shortened(index, argv))
            argv = [*argv, "--overwrite"]
        returned = run(argv)(shortened(index, argv))
        out = capsys.readouterr().out
        if os.environ.get("CLASSIC_TRANSCRIPT"):  # what each command printed, e.g. for a closing note
            with open(os.environ["CLASSIC_TRANSCRIPT"], "a") as f:
                f.write(f"$ {line}   (run as: {' '.join(shortened(index, argv))})\n{out}\n")
        check(index, out, returned)
        if index == 3:
            first_results = returned
