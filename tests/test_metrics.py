"""metrics.py: the Market-1501 metric on hand-computed cases, the readable and fast rankings equal."""

import numpy as np
import pytest

from metrics import evaluate as evaluate_metric
from metrics import match_ranks, match_ranks_fast, protocol_masks

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


@pytest.mark.parametrize("fast", [True, False])
def test_hand_computed_metric(fast):
    check(evaluate_metric([DIST], Q_PID, Q_CAM, G_PID, G_CAM, fast=fast), EXPECTED)


def test_per_query_numbers_and_top_images():
    results = evaluate_metric([DIST[:2], DIST[2:]], Q_PID, Q_CAM, G_PID, G_CAM, per_query=True)
    check(results, EXPECTED)  # the same means
    per_query = results["per_query"]
    assert per_query["ap"] == pytest.approx([0.5, 1, 0, 0, 0.5])  # A, B, C and D skipped (0), E
    assert per_query["ap_market"] == pytest.approx(
        [(0.25 + (1 / 3 + 1 / 2) / 2 + (2 / 5 + 1 / 2) / 2) / 3, 1, 0, 0, 0.25]
    )
    assert per_query["first_rank"].tolist() == [2, 1, 0, 0, 2] and per_query["n_good"].tolist() == [
        3,
        1,
        0,
        0,
        1,
    ]
    # The 8 nearest of each query, junk included, ties in gallery order (E: g1 before g6).
    assert per_query["top"].shape == (5, 8)
    assert per_query["top"][0].tolist() == list(range(8)) and per_query["top"][1][0] == 6
    assert per_query["top"][4][:2].tolist() == [1, 6]
    assert "per_query" not in evaluate_metric([DIST], Q_PID, Q_CAM, G_PID, G_CAM)


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
    """Query by query, straight from the definitions (the module docstring of metrics.py)."""
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
    check(
        evaluate_metric([dist], q_pid, q_cam, g_pid, g_cam, fast=False),
        reference_metric(dist, q_pid, q_cam, g_pid, g_cam),
    )
    assert results["n_skipped"] == n_q - results["n_evaluated"] > 0


def test_protocol_masks():
    # Query id 1, camera 1 against the gallery above: g0 same id and camera (junk), g3 label -1 (junk),
    # g2, g5, g7 the same id from other cameras (good), the others wrong.
    good, junk = protocol_masks([1], [1], G_PID, G_CAM)
    assert np.flatnonzero(good[0]).tolist() == [2, 5, 7]
    assert np.flatnonzero(junk[0]).tolist() == [0, 3]


@pytest.mark.parametrize("seed", range(3))
def test_fast_ranking_equals_the_readable_one(seed):
    rng = np.random.default_rng(seed)
    q_pid, q_cam = rng.integers(1, 12, 30), rng.integers(1, 4, 30)
    g_pid, g_cam = rng.integers(-1, 10, 200), rng.integers(1, 4, 200)
    dist = rng.integers(-8, 8, (30, 200)).astype(np.float32) / 4  # many ties, and -0.0 beside 0.0
    dist[dist == 0] = np.where(rng.random(int((dist == 0).sum())) < 0.5, -0.0, 0.0)
    good, junk = protocol_masks(q_pid, q_cam, g_pid, g_cam)
    for got, want in zip(match_ranks_fast(dist, good, junk), match_ranks(dist, good, junk), strict=True):
        np.testing.assert_array_equal(got, want)
    readable = evaluate_metric([dist], q_pid, q_cam, g_pid, g_cam, fast=False)
    assert evaluate_metric([dist], q_pid, q_cam, g_pid, g_cam) == readable


def test_ties_with_the_first_true_match_are_counted():
    # Query E above: its true match g6 ties with the wrong g1; queries A and B have no such tie.
    assert evaluate_metric([DIST], Q_PID, Q_CAM, G_PID, G_CAM)["n_tied"] == 1
    # A tie with a junk image (ignored) is no tie: query A with g0 (same camera) at its first match's distance.
    dist = np.array([[0.3, 0.5, 0.3, 0.9, 0.9, 0.9, 0.9, 0.9]], dtype=np.float32)
    assert evaluate_metric([dist], [1], [1], G_PID, G_CAM)["n_tied"] == 0
