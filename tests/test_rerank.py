"""k-reciprocal re-ranking: the bounded-memory version equals a plain dense one written from the paper."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate_rerank
import re_ranking
from features import save_features
from metrics import evaluate, row_chunks

ROOT = Path(__file__).resolve().parents[1]


def dense_re_ranking(q_f, g_f, k1=20, k2=6, lambda_value=0.3):
    """Zhong et al. (CVPR 2017), step by step on dense (N, N) matrices, in float64.

    As in the authors' reference code: the squared Euclidean distance over all probe + gallery
    features, normalised by the maximum of each column and transposed; neighbour lists from a full
    (here stable) argsort of each row, the point itself included.
    """
    x = np.concatenate([q_f, g_f]).astype(np.float64)
    n_q, n = len(q_f), len(x)
    sq = (x * x).sum(axis=1)
    original = sq[:, None] + sq[None, :] - 2 * x @ x.T
    original = (original / original.max(axis=0)).T
    rank = np.argsort(original, axis=1, kind="stable")

    def k_reciprocal(i, k):
        """The j among the k + 1 nearest of i that have i among their own k + 1 nearest."""
        return {int(j) for j in rank[i, : k + 1] if i in rank[j, : k + 1]}

    v = np.zeros((n, n))
    for i in range(n):
        neighbours = k_reciprocal(i, k1)
        expansion = set(neighbours)
        for candidate in neighbours:
            half = k_reciprocal(candidate, int(np.around(k1 / 2)))
            if len(half & neighbours) > 2 / 3 * len(half):
                expansion |= half
        members = sorted(expansion)
        weight = np.exp(-original[i, members])
        v[i, members] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((n_q, n - n_q))
    for i in range(n_q):
        for j in range(n - n_q):
            jaccard[i, j] = 1 - np.minimum(v[i], v[n_q + j]).sum() / np.maximum(v[i], v[n_q + j]).sum()
    return (1 - lambda_value) * jaccard + lambda_value * original[:n_q, n_q:]


def unit_features(rng, n, dim):
    f = rng.standard_normal((n, dim)).astype(np.float32)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("n_q", "n_g", "k1", "k2", "lambda_value", "rows"),
    [
        (20, 70, 20, 6, 0.3, 1500),  # the paper's parameters, all rows in one chunk
        (20, 70, 20, 6, 0.3, 7),  # chunks of 7 rows (fewer than k1), one across the probe-gallery boundary
        (15, 60, 5, 3, 0.5, 1),  # odd k1: round(5 / 2) = 2 (half to even); one row at a time
        (10, 40, 7, 1, 0.0, 9),  # k2 = 1: no query expansion; Jaccard distance only
        (25, 50, 20, 21, 1.0, 16),  # k2 = k1 + 1; original distance only
        (4, 9, 20, 6, 0.3, 5),  # fewer points than k1 + 1
        (2, 3, 20, 6, 0.3, 1),  # fewer points than k2
    ],
)
def test_equals_the_dense_algorithm(monkeypatch, n_q, n_g, k1, k2, lambda_value, rows):
    monkeypatch.setattr(re_ranking, "ROWS", rows)
    rng = np.random.default_rng(n_q + n_g + rows)
    q_f, g_f = unit_features(rng, n_q, 16), unit_features(rng, n_g, 16)
    dist = re_ranking.re_ranking(q_f, g_f, k1, k2, lambda_value)
    assert dist.shape == (n_q, n_g) and dist.dtype == np.float32
    np.testing.assert_allclose(dist, dense_re_ranking(q_f, g_f, k1, k2, lambda_value), rtol=0, atol=1e-5)


@pytest.mark.parametrize("rows", [1500, 6, 5])
def test_ties_go_to_the_smaller_index(monkeypatch, rows):
    # Small integer features: every distance is exact in float32, with many exact ties, which both
    # versions break by index (the dense one through its stable argsort).
    monkeypatch.setattr(re_ranking, "ROWS", rows)
    rng = np.random.default_rng(rows)
    q_f = rng.integers(-2, 3, (12, 5)).astype(np.float32)
    g_f = rng.integers(-2, 3, (45, 5)).astype(np.float32)
    expected = dense_re_ranking(q_f, g_f, 6, 3, 0.3)
    np.testing.assert_allclose(re_ranking.re_ranking(q_f, g_f, 6, 3, 0.3), expected, rtol=0, atol=1e-5)


def test_smallest_orders_ties_by_index():
    d = torch.tensor([[3, 1, 2, 1, 1, 0], [5, 5, 5, 5, 5, 5], [2, 0, 2, 1, 2, 2], [-0.0, 1, 0.0, -0.0, 1, 1]])
    # Row 0: the tie at the 3rd place (three 1s) keeps the smaller indices; row 2: the order among the
    # selected ties; row 3: -0.0 and 0.0 are equal.
    expected = [[5, 1, 3], [0, 1, 2], [1, 3, 0], [0, 2, 3]]
    values, index = re_ranking._smallest(d, 3)
    assert index.tolist() == expected
    assert values.tolist() == d.gather(1, torch.tensor(expected)).tolist()


def test_bad_parameters():
    f = np.eye(4, dtype=np.float32)
    for k1, k2, lambda_value in [(0, 1, 0.3), (5, 7, 0.3), (5, 0, 0.3), (20, 6, 1.5)]:
        with pytest.raises(ValueError, match="need k1"):
            re_ranking.re_ranking(f, f, k1, k2, lambda_value)


def features_file(path, seed=0):
    rng = np.random.default_rng(seed)
    feats = {
        "query_f": unit_features(rng, 15, 8),
        "query_label": rng.integers(1, 6, 15),
        "query_cam": rng.integers(1, 3, 15),
        "gallery_f": unit_features(rng, 50, 8),
        "gallery_label": rng.integers(-1, 6, 50),
        "gallery_cam": rng.integers(1, 3, 50),
    }
    save_features(path, feats)
    return feats


def test_evaluate_rerank_reports_the_metric_of_the_re_ranked_distance(tmp_path, capsys):
    feats = features_file(tmp_path / "f.mat")
    argv = ["--result_file", str(tmp_path / "f.mat"), "--json", str(tmp_path / "r.json")]
    evaluate_rerank.main([*argv, "--k1", "5", "--k2", "2", "--lambda_value", "0.4"])
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["distance"] == "k-reciprocal re-ranking (k1=5, k2=2, lambda=0.4)"
    dist = dense_re_ranking(feats["query_f"], feats["gallery_f"], 5, 2, 0.4)
    labels = feats["query_label"], feats["query_cam"], feats["gallery_label"], feats["gallery_cam"]
    expected = evaluate(row_chunks(dist), *labels)
    for name in ("rank1", "rank5", "mAP", "mAP_market1501", "mINP", "n_skipped"):
        assert results[name] == pytest.approx(expected[name]), name
    assert f"mAP(non-interpolated):{expected['mAP']:.4f}" in out


def test_evaluate_rerank_rejects_bad_parameters(tmp_path, capsys):
    for extra, named in (
        (["--k1", "5", "--k2", "7"], "--k1 5 --k2 7 --lambda_value 0.3"),
        (["--lambda_value", "-0.1"], "--k1 20 --k2 6 --lambda_value -0.1"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            evaluate_rerank.main(["--result_file", str(tmp_path / "f.mat"), *extra])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert named in err and "need k1 >= 1, 1 <= k2 <= k1 + 1, 0 <= lambda <= 1" in err


def test_identical_features_are_refused():
    same = np.tile(np.float32([0.6, 0.8]), (5, 1))
    with pytest.raises(ValueError, match="all the features are the same vector"):
        re_ranking.re_ranking(same[:2], same[2:], 2, 1, 0.3)
    # Two distinct vectors are enough to re-rank.
    same[0] = [0.8, 0.6]
    assert np.isfinite(re_ranking.re_ranking(same[:2], same[2:], 2, 1, 0.3)).all()


def test_evaluate_rerank_names_the_file_of_a_collapsed_model(tmp_path):
    feats = features_file(tmp_path / "f.mat")
    feats["query_f"][:] = feats["gallery_f"][:] = feats["gallery_f"][0]
    save_features(tmp_path / "collapsed.mat", feats)
    run = subprocess.run(
        [sys.executable, "evaluate_rerank.py", "--result_file", str(tmp_path / "collapsed.mat")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    message = "every query feature is the same vector, so there is nothing to rank (did training collapse?)"
    assert run.stderr.strip().splitlines() == [f"error: {tmp_path / 'collapsed.mat'}: {message}"]


def test_lambda_0_is_refused_because_most_of_the_gallery_ties(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_rerank.main(["--result_file", str(tmp_path / "f.mat"), "--lambda_value", "0"])
    assert exit_info.value.code == 2
    assert (
        "--lambda_value 0 ranks by the Jaccard distance alone, which ties most of the gallery"
        in capsys.readouterr().err
    )
