"""The evaluate scripts: evaluate.py, evaluate_gpu.py and evaluate_rerank.py's shared command line,
output and JSON, and multi-query evaluation."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_features import random_features

import evaluate
import evaluate_gpu
import evaluate_rerank
from features import save_features
from utils import run_main

ROOT = Path(__file__).resolve().parent.parent


def multi_query_file(path):
    """One query (id 1, camera 1) whose own feature is nearest a wrong image, but whose multi-query
    images point to its true match."""
    e = np.eye(3, dtype=np.float32)
    feats = {
        "query_f": e[[0]],
        "query_label": np.array([1]),
        "query_cam": np.array([1]),
        "gallery_f": e[[0, 1]],  # g0: id 2 (wrong), g1: id 1, camera 2 (match)
        "gallery_label": np.array([2, 1]),
        "gallery_cam": np.array([2, 2]),
        "mquery_f": e[[1, 1, 2]],
        "mquery_label": np.array([1, 1, 1]),
        "mquery_cam": np.array([1, 1, 2]),
    }
    save_features(path, feats)
    return str(path)


MULTI_HEADER = "multi-query (3 multi-query images; 0 queries without any keep their own feature)"


@pytest.mark.parametrize("script", [evaluate, evaluate_gpu, evaluate_rerank])
def test_a_file_with_multi_query_features_gets_both_results(script, tmp_path, capsys):
    # The classic sequence `python test.py --multi; python evaluate_gpu.py` prints both, single first.
    path = multi_query_file(tmp_path / "f.mat")
    extra = {evaluate_gpu: ["--gpu_ids", "-1"], evaluate_rerank: ["--k1", "1", "--k2", "1"]}.get(script, [])
    runs = script.main(["--result_file", path, "--json", str(tmp_path / "both.json"), *extra])
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith(path)] == [
        f"{path}: written by an unknown model (no checkpoint hash in the file)",
        f"{path}: 1 queries x 2 gallery, single-query",
        f"{path}: 1 queries x 2 gallery, {MULTI_HEADER}",
    ]
    assert [r["protocol"] for r in runs] == ["single-query", "multi-query"]
    both = json.loads((tmp_path / "both.json").read_text())
    assert (both["protocol"], both["multi_query"]["protocol"]) == ("single-query", "multi-query")
    if script is not evaluate_rerank:
        assert (both["rank1"], both["mAP"]) == (0, 0.5)
        assert (both["multi_query"]["rank1"], both["multi_query"]["mAP"]) == (1, 1)


def test_single_or_multi_alone(tmp_path, capsys):
    path = multi_query_file(tmp_path / "f.mat")
    evaluate.main(["--result_file", path, "--single", "--json", str(tmp_path / "single.json")])
    evaluate.main(["--result_file", path, "--multi", "--json", str(tmp_path / "multi.json")])
    out = capsys.readouterr().out
    assert out.count("single-query") == 1 and out.count(MULTI_HEADER) == 1
    single = json.loads((tmp_path / "single.json").read_text())
    multi = json.loads((tmp_path / "multi.json").read_text())
    assert (single["protocol"], single["rank1"], single["mAP"]) == ("single-query", 0, 0.5)
    assert (multi["protocol"], multi["rank1"], multi["mAP"]) == ("multi-query", 1, 1)
    assert "multi_query" not in single and "multi_query" not in multi
    with pytest.raises(SystemExit):
        evaluate.main(["--result_file", path, "--single", "--multi"])


def test_multi_without_multi_query_features_is_an_error(tmp_path, capsys):
    save_features(tmp_path / "f.mat", random_features())
    with pytest.raises(SystemExit):
        run_main(evaluate.main, ["--result_file", str(tmp_path / "f.mat"), "--multi"])
    assert "no multi-query features (mquery_f); run test.py --multi" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# The scripts.


@pytest.fixture(scope="module")
def random_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("features") / "pytorch_result.mat"
    save_features(path, random_features(n_q=50, n_g=400, dim=16, seed=1))
    return path


def test_evaluate_and_evaluate_gpu_print_the_same(random_file, capsys):
    evaluate.main(["--result_file", str(random_file)])
    numpy_out = capsys.readouterr().out
    evaluate_gpu.main(["--result_file", str(random_file), "--gpu_ids", "-1"])
    assert capsys.readouterr().out == numpy_out
    # The default --gpu_ids 0 falls back to the CPU with a warning when there is no CUDA.
    evaluate_gpu.main(["--result_file", str(random_file)])
    assert capsys.readouterr().out.endswith(numpy_out)
    assert numpy_out.splitlines()[2].startswith("Rank@1:")


def test_json_holds_the_printed_numbers(random_file, tmp_path, capsys):
    json_path = tmp_path / "out" / "results.json"
    evaluate.main(["--result_file", str(random_file), "--json", str(json_path)])
    out = capsys.readouterr().out
    results = json.loads(json_path.read_text())
    assert results["result_file"] == str(random_file)
    assert results["model"] == "model/ft_ResNet50 epoch last"
    assert results["protocol"] == "single-query" and results["distance"] == "-q.g (numpy)"
    assert (results["n_query"], results["n_gallery"]) == (50, 400)
    assert results["n_evaluated"] + results["n_skipped"] == 50 and results["n_skipped"] > 0
    assert len(results["cmc"]) == 50 and results["cmc"][0] == results["rank1"]
    assert f"Rank@1:{results['rank1']:.4f} Rank@5:{results['rank5']:.4f}" in out
    assert f"mAP:{results['mAP_market1501']:.4f}\n" in out
    assert f"mAP(non-interpolated):{results['mAP']:.4f} mINP:{results['mINP']:.4f}" in out
    assert f"skipped (no true match in the gallery):{results['n_skipped']}" in out


def test_the_output_names_the_model_that_wrote_the_file(tmp_path, capsys):
    feats = random_features()
    feats.update(
        model_epoch="59", checkpoint_sha256="0123456789abcdef" * 4, extraction="image + flip, scales 1"
    )
    save_features(tmp_path / "f.mat", feats)
    results = evaluate.main(["--result_file", str(tmp_path / "f.mat")])
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        f"{tmp_path / 'f.mat'}: written by model/ft_ResNet50 epoch last (checkpoint sha256 0123456789ab), "
        "image + flip, scales 1"
    )
    assert results[0]["checkpoint_sha256"] == "0123456789abcdef" * 4 and results[0]["model_epoch"] == "59"


def test_default_result_file_is_in_the_current_folder(random_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pytorch_result.mat").write_bytes(random_file.read_bytes())
    evaluate.main([])
    assert capsys.readouterr().out.splitlines()[1].startswith("pytorch_result.mat: 50 queries x 400 gallery")


@pytest.mark.parametrize("script", [evaluate, evaluate_gpu, evaluate_rerank])
def test_help(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--result_file" in out and "--json" in out and "--multi" in out and "pytorch_result.mat" in out
    assert ("--gpu_ids" in out) == (script is evaluate_gpu)
    assert ("--k1" in out) == (script is evaluate_rerank)


def test_evaluate_does_not_import_torch():
    code = "import sys, evaluate; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_degenerate_features_are_refused_or_warned(tmp_path, capsys):
    feats = random_features(n_q=10, n_g=40)
    zero = {**feats, "query_f": np.zeros_like(feats["query_f"])}
    save_features(tmp_path / "zero.mat", zero)
    with pytest.raises(SystemExit):
        run_main(evaluate.main, ["--result_file", str(tmp_path / "zero.mat")])
    assert "every query feature is zero, so there is nothing to rank" in capsys.readouterr().err
    zeros, same = (feats["gallery_f"].copy() for _ in range(2))
    zeros[:3] = 0
    same[:6] = same[6]  # 7 of 40: a tenth or more
    for name, gallery_f in (("zeros", zeros), ("same", same)):
        save_features(tmp_path / f"{name}.mat", {**feats, "gallery_f": gallery_f})
        evaluate.main(["--result_file", str(tmp_path / f"{name}.mat")])
    out = capsys.readouterr().out
    assert (
        f"warning: {tmp_path / 'zeros.mat'}: 3 of 40 gallery features are zero (no feature): they tie" in out
    )
    assert f"warning: {tmp_path / 'same.mat'}: 7 of 40 gallery features are one same vector: they tie" in out
