"""test.py: features of query, gallery and multi-query images, written to the features file."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import test as extract  # our test.py (the scripts' folder comes first on sys.path)
from data import load_image
from data import test_transform as reid_transform
from features import load_features
from model import load_trained_model
from utils import UserError, file_sha256, save_yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_trained(tiny_trained, monkeypatch):
    monkeypatch.chdir(tiny_trained)
    return tiny_trained


def run(data, *extra, name="tiny"):
    extract.main(["--name", name, "--test_dir", str(data), "--gpu_ids", "-1", "--batchsize", "5", *extra])


def test_features_file(tiny_prepared, in_trained):
    run(tiny_prepared)
    feats = load_features("pytorch_result.mat")  # the classic default, in the current folder
    assert feats["query_f"].shape == (4, 512) and feats["gallery_f"].shape == (8, 512)
    np.testing.assert_allclose(np.linalg.norm(feats["gallery_f"], axis=1), 1, atol=1e-5)
    # ids and cameras come from the file names through the shared parser
    assert feats["query_label"].tolist() == [1, 2, 3, 4]
    assert feats["query_cam"].tolist() == [1, 1, 1, 1]
    assert sorted(set(feats["gallery_cam"].tolist())) == [2, 3]
    assert all(Path(p).name.startswith(f"{pid:04d}_c{cam}") for p, pid, cam in
               zip(feats["gallery_path"], feats["gallery_label"], feats["gallery_cam"]))  # fmt: skip
    # Provenance: the model folder, epoch and checkpoint, and how the features were made.
    assert feats["model"] == "model/tiny epoch last" and feats["model_epoch"] == "last"
    assert Path(feats["model_dir"]) == (in_trained / "model/tiny").resolve()
    assert feats["checkpoint_sha256"] == file_sha256(in_trained / "model/tiny/net_last.pth")
    # test.py's default on a CPU: onnxruntime, on the ONNX model it exports first when it is absent.
    assert (
        feats["extraction"]
        == "image + flip, area scales 1, 64x32, float32, onnxruntime model/tiny/net_last.onnx"
    )
    assert (in_trained / "model/tiny/net_last.onnx").is_file()
    assert "mquery_f" not in feats


def test_multi_query_and_result_file_option(tiny_prepared, in_trained):
    run(tiny_prepared, "--multi", "--result_file", "multi.mat")
    feats = load_features("multi.mat")
    assert feats["mquery_f"].shape == (8, 512)
    assert feats["mquery_label"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4]


def test_multi_scale_is_an_area_scale_as_in_the_classic(tiny_prepared, in_trained):
    # --ms 1,0.5: the image, and the image with each side resized by sqrt(0.5), by hand.
    run(tiny_prepared, "--ms", "1,0.5", "--result_file", "two.mat")
    feats = load_features("two.mat")
    model, _ = load_trained_model(in_trained / "model/tiny")
    images = torch.stack([reid_transform(64, 32)(load_image(p)) for p in feats["query_path"]])
    side = math.sqrt(0.5)  # the classic's test.py: scale_factor = sqrt of each --ms value
    small = torch.nn.functional.interpolate(images, scale_factor=side, mode="bicubic", align_corners=False)
    assert small.shape[2:] == (45, 22)
    with torch.no_grad():
        total = sum(model.embed(x) + model.embed(x.flip(dims=[3])) for x in (images, small))
    expected = (total / total.norm(dim=1, keepdim=True)).numpy()
    np.testing.assert_allclose(feats["query_f"], expected, atol=1e-5)
    assert feats["extraction"] == "image + flip, area scales 1,0.5, 64x32, float32"
    for bad in ("1,x", "1,-1", "0"):
        with pytest.raises(SystemExit):
            extract.parse_args(["--ms", bad])


def test_bf16_close_to_fp32(tiny_prepared, in_trained):
    run(tiny_prepared, "--result_file", "fp32.mat")
    run(tiny_prepared, "--bf16", "--result_file", "bf16.mat")
    fp32, bf16 = load_features("fp32.mat")["gallery_f"], load_features("bf16.mat")["gallery_f"]
    assert np.min(np.sum(fp32 * bf16, axis=1)) > 0.98  # cosine similarity


def test_naming_from_dataset_yaml(tiny_prepared, in_trained, tmp_path):
    import shutil

    data = tmp_path / "renamed"
    shutil.copytree(tiny_prepared, data)
    for split in ("query", "gallery"):
        for path in (data / split).rglob("*.jpg"):
            pid, cam = path.name[:4], path.name[6]
            path.rename(path.with_name(f"p{pid}_cam{cam}_x.jpg"))
    with pytest.raises(UserError, match="does not match"):
        run(data)
    save_yaml(data / "dataset.yaml", {"naming": r"^p(?P<pid>\d+)_cam(?P<cam>\d+)"})
    run(data, "--result_file", "renamed.mat")
    assert load_features("renamed.mat")["query_label"].tolist() == [1, 2, 3, 4]


def test_bad_input(tiny_prepared, in_trained, tmp_path):
    with pytest.raises(UserError, match="one of: last"):
        run(tiny_prepared, "--which_epoch", "59")
    with pytest.raises(UserError, match="opts.yaml: missing"):
        run(tiny_prepared, name="absent")
    with pytest.raises(UserError, match="no such folder"):
        run(tmp_path / "nothing")
    with pytest.raises(UserError, match="holds a resnet18 model"):
        run(tiny_prepared, "--PCB")


def test_pcb_features(tiny_prepared, tmp_path, monkeypatch):
    import train

    monkeypatch.chdir(tmp_path)
    train.main(["--name", "pcb", "--data_dir", str(tiny_prepared), "--PCB", "--no-pretrained", "--gpu_ids", "-1",
                "--height", "96", "--width", "48", "--batchsize", "4", "--total_epoch", "1"])  # fmt: skip
    run(tiny_prepared, "--PCB", name="pcb")  # the classic flag is accepted when it agrees
    f = load_features("pytorch_result.mat")["query_f"]
    assert f.shape == (4, 6 * 2048)
    np.testing.assert_allclose(np.linalg.norm(f.reshape(4, 6, 2048), axis=2), 6**-0.5, atol=1e-5)


def test_help():
    result = subprocess.run(
        [sys.executable, str(ROOT / "test.py"), "--help"], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0 and "--which_epoch" in result.stdout and "--ms" in result.stdout


def test_two_processes_write_what_one_writes(tiny_prepared, in_trained):
    run(tiny_prepared, "--multi", "--result_file", "one.mat")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
           str(ROOT / "test.py"), "--name", "tiny", "--test_dir", str(tiny_prepared), "--gpu_ids", "-1",
           "--batchsize", "3", "--multi", "--result_file", "two.mat"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "with 2 processes" in result.stdout
    one, two = load_features("one.mat"), load_features("two.mat")
    assert sorted(one) == sorted(two)
    for key, value in one.items():
        if key.endswith("_f"):
            np.testing.assert_allclose(two[key], value, atol=1e-5)
        else:
            assert np.array_equal(two[key], value) if isinstance(value, np.ndarray) else two[key] == value, (
                key
            )
