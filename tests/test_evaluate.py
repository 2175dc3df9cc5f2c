"""The metric (hand-computed cases), the features file, and the evaluate scripts' command lines."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import evaluate
import evaluate_gpu
import evaluate_rerank
from evaluation import evaluate as evaluate_metric
from evaluation import load_features, multi_query_features, save_features
from utils import UserError, run_main

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------------------------
# Hand-computed metric.

#                  g0   g1   g2   g3   g4   g5   g6   g7
G_PID = np.array([1, 2, 1, -1, 0, 1, 3, 1])
G_CAM = np.array([1, 2, 2, 3, 2, 3, 1, 4])
# Query A: id 1, camera 1; the gallery sorted by distance: g0 g1 g2 g3 g4 g5 g6 g7.
#   g0 (id 1, camera 1) is ignored: same id, same camera; g3 (-1) is ignored: junk.
#   Kept ranking: g1 (wrong), g2 (match), g4 (distractor: wrong), g5 (match), g6 (wrong), g7 (match).
#   True matches at ranks r = 2, 4, 6; n = 3.
#   Rank@1 = 0, Rank@5 = 1.
#   AP non-interpolated = (1/2 + 2/4 + 3/6) / 3 = 0.5
#   AP Market-1501 rule = (1/3) [ (0/1 + 1/2) / 2 + (1/3 + 2/4) / 2 + (2/5 + 3/6) / 2 ]
#                       = (1/3) (0.25 + 0.416667 + 0.45) = 0.372222
#   INP = 3 / 6 = 0.5
DIST_A = [0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7]
# Query B: id 3, camera 2; g6 (id 3, camera 1) is nearest. Rank 1: both APs = 1, INP = 1.
DIST_B = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.01, 0.5]
# Query C: id 4: not in the gallery: skipped.
DIST_C = [0.1] * 8
# Query D: id 2, camera 2: its only gallery image g1 is from the same camera, so ignored: skipped.
DIST_D = [0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
# Query E: id 3, camera 3; g1 (wrong) and g6 (match) tie at 0.2, and the tie keeps gallery order:
#   g1 first, so the match is at rank 2. Rank@1 = 0; AP = 1/2; AP Market = (0/1 + 1/2) / 2 = 0.25;
#   INP = 1/2.
DIST_E = [0.3, 0.2, 0.3, 0.3, 0.3, 0.3, 0.2, 0.3]
Q_PID = np.array([1, 3, 4, 2, 3])
Q_CAM = np.array([1, 2, 1, 2, 3])
DIST = np.array([DIST_A, DIST_B, DIST_C, DIST_D, DIST_E], dtype=np.float32)
# Over the 3 evaluated queries A, B, E (C and D are skipped):
EXPECTED = {
    "rank1": (0 + 1 + 0) / 3,
    "rank5": 1.0,
    "rank10": 1.0,
    "mAP": (0.5 + 1 + 0.5) / 3,
    "mAP_market1501": ((0.25 + (1 / 3 + 1 / 2) / 2 + (2 / 5 + 1 / 2) / 2) / 3 + 1 + 0.25) / 3,
    "mINP": (0.5 + 1 + 0.5) / 3,
    "n_query": 5,
    "n_gallery": 8,
    "n_evaluated": 3,
    "n_skipped": 2,
}


def check(results, expected):
    for name, value in expected.items():
        assert results[name] == pytest.approx(value, abs=1e-12), name


def test_hand_computed_metric():
    check(evaluate_metric([DIST], Q_PID, Q_CAM, G_PID, G_CAM), EXPECTED)


def test_chunking_does_not_change_the_metric():
    chunks = [DIST[:1], DIST[1:3], DIST[3:]]
    check(evaluate_metric(iter(chunks), Q_PID, Q_CAM, G_PID, G_CAM), EXPECTED)
    check(evaluate_metric((row[None] for row in DIST), Q_PID, Q_CAM, G_PID, G_CAM), EXPECTED)


def test_cmc_curve():
    results = evaluate_metric([DIST], Q_PID, Q_CAM, G_PID, G_CAM, max_rank=4)
    # first-match ranks of A, B, E: 2, 1, 2
    assert results["cmc"] == pytest.approx([1 / 3, 1, 1, 1])


def test_negative_zero_ties_with_zero():
    # Query id 1, camera 1: g1 (wrong) at +0.0 and g2 (match) at -0.0 are at equal distances, so the
    # gallery order puts g1 first and the first match at rank 2. (Sorting the raw float bits would
    # put -0.0 first.)
    dist = np.array([[5, 0.0, -0.0, 5, 5, 5, 5, 5]], dtype=np.float32)
    assert evaluate_metric([dist], [1], [1], G_PID, G_CAM)["rank1"] == 0


def test_no_valid_query_gives_zeros():
    results = evaluate_metric([DIST[2:4]], Q_PID[2:4], Q_CAM[2:4], G_PID, G_CAM)
    assert results["n_evaluated"] == 0 and results["n_skipped"] == 2 and results["mAP"] == 0


def test_bad_distances_are_errors():
    with pytest.raises(ValueError, match="NaN"):
        evaluate_metric([np.full((5, 8), np.nan)], Q_PID, Q_CAM, G_PID, G_CAM)
    with pytest.raises(ValueError, match="cover 3 queries"):
        evaluate_metric([DIST[:3]], Q_PID, Q_CAM, G_PID, G_CAM)
    with pytest.raises(ValueError, match="shape"):
        evaluate_metric([DIST[:, :7]], Q_PID, Q_CAM, G_PID, G_CAM)


def reference_metric(dist, q_pid, q_cam, g_pid, g_cam):
    """Query by query, straight from the definitions (the module docstring of evaluation.py)."""
    first, ap_market, ap, inp = [], [], [], []
    for row, pid, cam in zip(dist, q_pid, q_cam):
        order = np.argsort(row, kind="stable")
        kept = [j for j in order if g_pid[j] != -1 and not (g_pid[j] == pid and g_cam[j] == cam)]
        ranks = [r for r, j in enumerate(kept, start=1) if g_pid[j] == pid]
        if not ranks:
            continue
        n = len(ranks)
        first.append(ranks[0])
        ap.append(sum(i / r for i, r in enumerate(ranks, start=1)) / n)
        old = [1.0 if r == 1 else (i - 1) / (r - 1) for i, r in enumerate(ranks, start=1)]
        ap_market.append(sum((o + i / r) / 2 for o, (i, r) in zip(old, enumerate(ranks, start=1))) / n)
        inp.append(n / ranks[-1])
    first = np.array(first)
    return {
        "rank1": np.mean(first <= 1),
        "rank5": np.mean(first <= 5),
        "rank10": np.mean(first <= 10),
        "mAP": np.mean(ap),
        "mAP_market1501": np.mean(ap_market),
        "mINP": np.mean(inp),
        "n_evaluated": len(first),
    }


def test_metric_equals_the_per_query_definition_on_random_data():
    rng = np.random.default_rng(0)
    n_q, n_g = 40, 300
    q_pid, q_cam = rng.integers(1, 19, n_q), rng.integers(1, 4, n_q)  # ids 15-18: not in the gallery
    g_pid, g_cam = rng.integers(-1, 15, n_g), rng.integers(1, 4, n_g)
    # Few distinct values, so there are many ties, and a negative range like -q.g.
    dist = rng.integers(-20, 20, (n_q, n_g)).astype(np.float32) / 10
    results = evaluate_metric([dist[:7], dist[7:]], q_pid, q_cam, g_pid, g_cam)
    check(results, reference_metric(dist, q_pid, q_cam, g_pid, g_cam))
    assert results["n_skipped"] == n_q - results["n_evaluated"] > 0


# ----------------------------------------------------------------------------------------------------
# The features file.


def random_features(n_q=12, n_g=40, n_m=0, dim=8, seed=0):
    rng = np.random.default_rng(seed)

    def unit(n):
        f = rng.standard_normal((n, dim)).astype(np.float32)
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    feats = {
        "query_f": unit(n_q),
        "query_label": rng.integers(1, 8, n_q),  # ids 6 and 7 are not in the gallery
        "query_cam": rng.integers(1, 4, n_q),
        "gallery_f": unit(n_g),
        "gallery_label": rng.integers(-1, 6, n_g),
        "gallery_cam": rng.integers(1, 4, n_g),
        "query_path": [f"query/{i:04d}/{i:04d}_c1s1_0000{i}_00 é.jpg" for i in range(n_q)],
        "gallery_path": [f"gallery/{i:04d}_c2s1_0000{i}_00.jpg " for i in range(n_g)],
        "model": "model/ft_ResNet50 epoch last",
    }
    if n_m:
        feats.update(
            mquery_f=unit(n_m), mquery_label=rng.integers(1, 6, n_m), mquery_cam=rng.integers(1, 4, n_m)
        )
    return feats


def test_features_round_trip(tmp_path):
    feats = random_features(n_m=20)
    save_features(tmp_path / "f.mat", feats)
    loaded = load_features(tmp_path / "f.mat")
    assert sorted(loaded) == sorted(feats)
    for key, value in feats.items():
        if isinstance(value, np.ndarray):
            assert loaded[key].shape == value.shape and loaded[key].dtype == value.dtype, key
            np.testing.assert_array_equal(loaded[key], value)
        else:
            assert loaded[key] == value, key  # paths keep their spaces and accents
    assert loaded["query_f"].dtype == np.float32 and loaded["query_label"].dtype == np.int64
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_classic_file_with_char_matrix_paths_loads(tmp_path):
    # The classic test.py saves lists as (1, n) rows and paths as a space-padded char matrix.
    feats = random_features()
    mat = {k: v for k, v in feats.items() if k not in ("query_path", "gallery_path", "model")}
    mat["query_path"] = feats["query_path"]
    scipy.io.savemat(tmp_path / "classic.mat", mat)
    loaded = load_features(tmp_path / "classic.mat")
    assert loaded["query_path"] == feats["query_path"]  # padding stripped
    assert loaded["gallery_label"].shape == (40,)


def test_save_rejects_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        save_features(tmp_path / "f.mat", {**random_features(), "query_feature": 1})


def write_mat(path, feats):
    scipy.io.savemat(path, feats)
    return path


@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        (lambda p: p.with_name("missing.mat"), "no such features file; run test.py first"),
        (lambda p: p.write_bytes(p.read_bytes()[:3000]) and p, "cannot read the features file"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]) and p, "cannot read the features file"),
        (lambda p: p.write_text("not a mat file\n" * 20) and p, "cannot read the features file"),
        (
            lambda p: write_mat(
                p, {k: v for k, v in random_features().items() if k not in ("gallery_cam", "query_f")}
            ),
            "missing query_f, gallery_cam",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "query_label": np.arange(11)}),
            "query_f has 12 rows but query_label has 11 entries",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "gallery_path": ["a.jpg"]}),
            "gallery_path has 1 paths but there are 40 features",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "query_f": np.full((12, 8), np.nan, np.float32)}),
            "query_f has 12 rows with NaN or inf",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "gallery_f": random_features(dim=6)["gallery_f"]}),
            "gallery_f has 6-d features but query_f has 8-d",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "query_f": np.ones((12, 2, 4), np.float32)}),
            "query_f must be a non-empty (n, d) array",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "query_f": 2 * random_features()["query_f"]}),
            "query_f rows must be L2-normalised",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "query_cam": np.full(12, 1.5)}),
            "query_cam must hold integers",
        ),
        (
            lambda p: write_mat(p, {**random_features(), "mquery_f": random_features()["query_f"]}),
            "missing mquery_label, mquery_cam",
        ),
    ],
)
def test_bad_features_file_is_a_one_line_error(tmp_path, capsys, make_bad, message):
    good = tmp_path / "pytorch_result.mat"
    save_features(good, random_features())
    bad = make_bad(good)
    with pytest.raises(SystemExit) as exit_info:
        run_main(evaluate.main, ["--result_file", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and message in err, err


def test_writing_bad_features_fails_before_writing(tmp_path):
    with pytest.raises(UserError, match="cannot write .*query_f has 12 rows with NaN"):
        save_features(tmp_path / "f.mat", {**random_features(), "query_f": np.full((12, 8), np.nan)})
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------
# Multi-query.


def test_multi_query_features_average_same_id_and_camera():
    feats = {
        "query_f": np.array([[1, 0, 0], [0, 1, 0]], np.float32),
        "query_label": np.array([1, 2]),
        "query_cam": np.array([1, 1]),
        # id 1 camera 1: two images whose mean is (0.5, 0.5, 0) -> normalised (0.7071, 0.7071, 0).
        # id 1 camera 2 and id 2 camera 2 belong to no query; query 2 (id 2, camera 1) has none.
        "mquery_f": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], np.float32),
        "mquery_label": np.array([1, 1, 1, 2]),
        "mquery_cam": np.array([1, 1, 2, 2]),
    }
    q_f, n_alone = multi_query_features(feats)
    np.testing.assert_allclose(q_f, [[2**-0.5, 2**-0.5, 0], [0, 1, 0]], atol=1e-6)
    assert n_alone == 1 and q_f.dtype == np.float32


def test_multi_flag_ranks_with_the_multi_query_mean(tmp_path, capsys):
    # One query (id 1, camera 1) whose own feature is nearest a wrong image, but whose multi-query
    # images point to its true match.
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
    save_features(tmp_path / "f.mat", feats)
    evaluate.main(["--result_file", str(tmp_path / "f.mat"), "--json", str(tmp_path / "single.json")])
    evaluate.main(
        ["--result_file", str(tmp_path / "f.mat"), "--multi", "--json", str(tmp_path / "multi.json")]
    )
    out = capsys.readouterr().out
    assert "multi-query (3 multi-query images; 0 queries without any keep their own feature)" in out
    single = json.loads((tmp_path / "single.json").read_text())
    multi = json.loads((tmp_path / "multi.json").read_text())
    assert (single["protocol"], single["rank1"], single["mAP"]) == ("single-query", 0, 0.5)
    assert (multi["protocol"], multi["rank1"], multi["mAP"]) == ("multi-query", 1, 1)


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
    assert numpy_out.splitlines()[1].startswith("Rank@1:")


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


def test_default_result_file_is_in_the_current_folder(random_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pytorch_result.mat").write_bytes(random_file.read_bytes())
    evaluate.main([])
    assert capsys.readouterr().out.startswith("pytorch_result.mat: 50 queries x 400 gallery")


@pytest.mark.parametrize("script", [evaluate, evaluate_gpu, evaluate_rerank])
def test_help(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--result_file" in out and "--json" in out and "--multi" in out and "pytorch_result.mat" in out
    assert ("--gpu_ids" in out) == (script is evaluate_gpu)
    assert ("--k1" in out) == (script is evaluate_rerank)


def test_numpy_scripts_do_not_import_torch():
    code = "import sys, evaluate, evaluate_rerank; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
