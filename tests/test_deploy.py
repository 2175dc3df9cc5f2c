"""deploy.py and export.py: ONNX export with its parity check, and test.py's onnxruntime backend."""

from pathlib import Path

import numpy as np
import pytest
import torch

import export
import test as extract  # our test.py
from deploy import FeatureGraph, OnnxFeatures, check_parity, export_onnx
from features import load_features
from model import ModelConfig, build_model
from utils import UserError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

PROVENANCE = {
    "model": "model/x epoch last",
    "model_dir": "/m/x",
    "model_epoch": "last",
    "checkpoint_sha256": "ab" * 32,
}


@pytest.fixture
def in_trained(tiny_trained, monkeypatch):
    monkeypatch.chdir(tiny_trained)
    return tiny_trained


# One network of each kind (bench/bench_export.py exports every row of the table): torchvision
# convolutional and transformer ones, the two written here, timm's, and PCB.
@pytest.mark.parametrize(
    "backbone",
    [
        "resnet18",
        "mobilenet_v3_large",
        "convnext_tiny",
        "swin_t",
        "osnet_x0_25",
        "resnet50_ibn_a",
        "timm:resnet10t",
        "PCB",
    ],
)
def test_networks_export_with_the_same_features(backbone, tmp_path):
    pcb = backbone == "PCB"
    config = ModelConfig(nclasses=5, backbone="resnet50" if pcb else backbone, PCB=pcb, height=96, width=48)
    model = build_model(config).eval()
    export_onnx(model, config, tmp_path / "m.onnx", PROVENANCE)
    images = torch.rand(3, 3, 96, 48)  # RGB in [0, 1]: the graph normalises them
    expected = FeatureGraph(model, imagenet=True, flip=True, l2=True)(images).numpy()
    onnx = OnnxFeatures(tmp_path / "m.onnx")
    np.testing.assert_allclose(onnx(images), expected, atol=1e-4)
    assert onnx(images[:1]).shape == (1, expected.shape[1])  # any batch size
    assert onnx.metadata["input"] == "96x48" and onnx.metadata["checkpoint_sha256"] == "ab" * 32


def test_steps_left_out_of_the_graph(tmp_path):
    config = ModelConfig(nclasses=5, backbone="resnet18", height=64, width=32)
    model = build_model(config).eval()
    export_onnx(model, config, tmp_path / "raw.onnx", PROVENANCE, imagenet=False, flip=False, l2=False)
    images = torch.randn(2, 3, 64, 32)  # already normalised
    with torch.no_grad():
        raw = model.embed(images).numpy()
    onnx = OnnxFeatures(tmp_path / "raw.onnx")
    np.testing.assert_allclose(onnx(images), raw, atol=1e-4)
    assert (onnx.metadata["imagenet_normalisation"], onnx.metadata["flip"], onnx.metadata["l2"]) == (
        "outside",
    ) * 3


def test_check_parity_counts_rankings_that_differ_beyond_ties():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((12, 8)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    assert check_parity(f, f, 4) == {"max_abs_diff": 0.0, "rankings_differ": 0}
    swapped = f.copy()
    swapped[[4, 5]] = swapped[[5, 4]]  # two gallery rows change places: the queries that rank them differ
    assert check_parity(f, swapped, 4)["rankings_differ"] == 4
    tied = f.copy()
    tied[5] = tied[4] = f[4]  # two equal gallery rows: a tiny change may order them either way
    nudged = tied.copy()
    nudged[5] += 1e-7
    assert check_parity(tied, nudged, 4)["rankings_differ"] == 0


def test_export_script_and_onnxruntime_backend(tiny_prepared, in_trained, capsys):
    export.main(["--name", "tiny", "--check_dir", str(tiny_prepared), "--check_images", "3"])
    out = capsys.readouterr().out
    assert "wrote model/tiny/net_last.onnx" in out
    assert "top-10 rankings identical for 3 of 3 queries (ties within" in out and "(tolerance 1e-04)" in out
    common = ["--name", "tiny", "--test_dir", str(tiny_prepared), "--gpu_ids", "-1"]
    extract.main([*common, "--result_file", "torch.mat"])
    extract.main([*common, "--backend", "onnxruntime", "--result_file", "onnx.mat"])
    by_torch, by_onnx = load_features("torch.mat"), load_features("onnx.mat")
    for key in ("query_f", "gallery_f"):
        np.testing.assert_allclose(by_onnx[key], by_torch[key], atol=1e-4)
    assert by_onnx["checkpoint_sha256"] == by_torch["checkpoint_sha256"]  # the same weights
    assert by_onnx["extraction"].endswith("float32, onnxruntime model/tiny/net_last.onnx")
    with pytest.raises(SystemExit):  # one scale, float32: the graph as exported
        extract.parse_args(["--backend", "onnxruntime", "--ms", "1,0.9"])


def test_onnx_of_another_checkpoint_is_refused(tiny_prepared, in_trained):
    Path("model/tiny/old.onnx").write_bytes(b"")
    with pytest.raises(UserError, match="old.onnx: onnxruntime cannot load it"):
        extract.main(["--name", "tiny", "--test_dir", str(tiny_prepared), "--gpu_ids", "-1", "--backend",
                      "onnxruntime", "--onnx", "model/tiny/old.onnx"])  # fmt: skip
    config = ModelConfig(nclasses=4, backbone="resnet18", height=64, width=32)
    export_onnx(build_model(config).eval(), config, Path("model/tiny/other.onnx"), PROVENANCE)
    with pytest.raises(UserError, match="other.onnx was exported from another checkpoint"):
        extract.main(["--name", "tiny", "--test_dir", str(tiny_prepared), "--gpu_ids", "-1", "--backend",
                      "onnxruntime", "--onnx", "model/tiny/other.onnx"])  # fmt: skip
    with pytest.raises(UserError, match="no such ONNX file; write it with export.py"):
        extract.main(["--name", "tiny", "--test_dir", str(tiny_prepared), "--gpu_ids", "-1", "--backend",
                      "onnxruntime", "--onnx", "absent.onnx"])  # fmt: skip


def test_auto_backend_exports_for_the_checkpoint_or_runs_torch(tiny_prepared, in_trained, capsys):
    # An export of another checkpoint where test.py looks: exported again, checked, then used.
    config = ModelConfig(nclasses=4, backbone="resnet18", height=64, width=32)
    export_onnx(build_model(config).eval(), config, Path("model/tiny/net_last.onnx"), PROVENANCE)
    common = ["--name", "tiny", "--test_dir", str(tiny_prepared), "--gpu_ids", "-1"]
    extract.main([*common, "--result_file", "auto.mat"])
    out = capsys.readouterr().out
    assert "exported model/tiny/net_last.onnx for onnxruntime; against PyTorch: max |difference|" in out
    assert (
        OnnxFeatures("model/tiny/net_last.onnx").metadata["checkpoint_sha256"]
        == load_features("auto.mat")["checkpoint_sha256"]
    )
    assert load_features("auto.mat")["extraction"].endswith("onnxruntime model/tiny/net_last.onnx")
    # What an export does not compute (several scales, bfloat16) runs on PyTorch.
    extract.main([*common, "--ms", "1,0.9", "--result_file", "ms.mat"])
    assert load_features("ms.mat")["extraction"] == "image + flip, area scales 1,0.9, 64x32, float32"
