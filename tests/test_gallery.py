"""gallery.py: the index on disk (round trip, memory-mapped, never half-written), exact chunked top-k
search against the full ranking, and the threshold on hand-made distances."""

import json

import numpy as np
import pytest

import gallery
from metrics import euclidean, feature_distance_chunks, top_k
from utils import UserError

PROVENANCE = {
    "model": "model/x epoch last",
    "model_dir": "/abs/model/x",
    "model_epoch": "last",
    "checkpoint_sha256": "ab" * 32,
    "extraction": "image + flip, scales 1, 64x32, float32",
}


def tied_features(n: int, seed: int, dim: int = 8) -> np.ndarray:
    """Unit rows with four entries of +-0.5: every dot product is exact in float32 whatever the order
    of the sums, so the many equal distances tie exactly in any chunking."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, dim), dtype=np.float32)
    for row in rows:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return rows


def full_ranking(q_f: np.ndarray, g_f: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every distance, a stable sort (metrics.match_ranks' order)."""
    dist = next(feature_distance_chunks(q_f, g_f))
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, euclidean(np.take_along_axis(dist, order, axis=1))


# ----------------------------------------------------------------------------------------------------
# Top-k and search.


@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_top_k_is_the_head_of_a_stable_sort(k):
    dist = np.random.default_rng(0).integers(0, 4, size=(5, 12)).astype(np.float32)  # many ties
    order, values = top_k(dist, k)
    expected = np.argsort(dist, axis=1, kind="stable")[:, :k]
    assert (order == expected).all()
    assert (values == np.take_along_axis(dist, expected, axis=1)).all()


def test_search_over_parts_and_chunks_is_the_full_ranking(monkeypatch):
    g_f = tied_features(300, seed=1)
    q_f = tied_features(9, seed=2)
    monkeypatch.setattr(gallery, "BLOCK_DISTANCES", 40)  # 4-5 gallery rows per chunk
    monkeypatch.setattr(gallery, "QUERY_BLOCK", 4)  # three blocks of queries
    parts = [g_f[:120], g_f[120:121], g_f[121:]]
    found, dist = gallery.search(q_f, parts, 15)
    expected, expected_dist = full_ranking(q_f, g_f, 15)
    assert (found == expected).all()
    assert dist == pytest.approx(expected_dist, abs=0)
    assert dist.dtype == np.float64


def test_search_leaves_out_each_querys_own_image():
    g_f = tied_features(40, seed=3)
    q_f = g_f[[5, 7]]
    found, dist = gallery.search(q_f, [g_f], 4, exclude=np.array([5, -1]))
    assert 5 not in found[0] and found[1][0] == 7 and dist[1][0] == 0
    assert (found[0] == [i for i in full_ranking(q_f[:1], g_f, 5)[0][0] if i != 5][:4]).all()
    with pytest.raises(ValueError, match="top 40 of 40 gallery images with one left out"):
        gallery.search(q_f, [g_f], 40, exclude=np.array([5, -1]))


# ----------------------------------------------------------------------------------------------------
# The index on disk.


def write_index(folder, g_f, labels=None, naming=None):
    paths = [f"/images/img{i:04d}.jpg" for i in range(len(g_f))]
    labels = np.full((len(g_f), 2), -1) if labels is None else labels
    meta = gallery.new_meta(PROVENANCE, g_f.shape[1], naming, None, naming is not None)
    return gallery.create_index(folder, meta, g_f, paths, labels), paths


def test_index_round_trip_memory_mapped(tmp_path):
    g_f = tied_features(50, seed=4)
    labels = np.stack([np.arange(50) // 5, np.arange(50) % 3 + 1], axis=1)
    meta, paths = write_index(tmp_path / "idx", g_f[:30], labels[:30], naming="market")
    meta = gallery.add_part(
        tmp_path / "idx", meta, g_f[30:], [f"/more/{i}.png" for i in range(20)], labels[30:]
    )
    index = gallery.open_index(tmp_path / "idx")
    assert index.size == 50 and [p["rows"] for p in index.meta["parts"]] == [30, 20]
    assert all(isinstance(part, np.memmap) for part in index.parts)  # not read into memory
    assert (index.features() == g_f).all() and (index.labels == labels).all()
    assert index.paths() == paths[:30] + [f"/more/{i}.png" for i in range(20)]
    assert {key: index.meta[key] for key in PROVENANCE} == PROVENANCE
    assert index.meta["naming"] == "market" and index.meta["cameras"] and index.meta["threshold"] is None
    q_f = tied_features(6, seed=5)
    assert (gallery.search(q_f, index.parts, 10)[0] == gallery.search(q_f, [g_f], 10)[0]).all()
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [
        "features-000000.npy", "features-000001.npy", "index.json", "labels-000000.npy", "labels-000001.npy",
        "paths-000000.txt", "paths-000001.txt",
    ]  # fmt: skip


def test_an_interrupted_add_leaves_the_index_as_it_was(tmp_path, monkeypatch):
    g_f = tied_features(20, seed=6)
    meta, _ = write_index(tmp_path / "idx", g_f[:10])
    before = (tmp_path / "idx" / "index.json").read_text()

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gallery, "write_meta", fail)
    with pytest.raises(OSError):
        gallery.add_part(
            tmp_path / "idx", meta, g_f[10:], [f"/x/{i}" for i in range(10)], np.full((10, 2), -1)
        )
    monkeypatch.undo()
    assert (tmp_path / "idx" / "index.json").read_text() == before
    assert gallery.open_index(tmp_path / "idx").size == 10  # the new part's files are not listed
    assert (tmp_path / "idx" / "features-000001.npy").exists()
    gallery.add_part(tmp_path / "idx", meta, g_f[10:12], ["/y/0", "/y/1"], np.full((2, 2), -1))  # cleans up
    index = gallery.open_index(tmp_path / "idx")
    assert index.size == 12 and index.paths()[-2:] == ["/y/0", "/y/1"]


def test_a_new_index_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gallery, "write_meta", fail)
    with pytest.raises(OSError):
        write_index(tmp_path / "idx", tied_features(5, seed=7))
    assert not (tmp_path / "idx").exists() and list(tmp_path.iterdir()) == []


def test_bad_indexes_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no gallery index here .*write one with index.py"):
        gallery.open_index(tmp_path)
    write_index(tmp_path / "idx", tied_features(5, seed=8))
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    meta["parts"][0]["rows"] = 6
    (tmp_path / "idx" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(
        UserError, match=r"cannot read the gallery index \(features-000000.npy holds float32 \(5, 8\)\)"
    ):
        gallery.open_index(tmp_path / "idx")
    (tmp_path / "idx" / "index.json").write_text("{")
    with pytest.raises(UserError, match="cannot read the gallery index"):
        gallery.open_index(tmp_path / "idx")
    with pytest.raises(UserError, match="a file name with a line break cannot be indexed"):
        gallery.add_part(tmp_path / "new", gallery.new_meta(PROVENANCE, 8, None, None, False), tied_features(1, 9),
                         ["/a\nb.jpg"], np.full((1, 2), -1))  # fmt: skip


def test_comparable_features_only():
    index_meta = {**PROVENANCE}
    assert gallery.check_comparable({**PROVENANCE}, index_meta, "q.mat") == ""
    with pytest.raises(UserError, match="q.mat was written by model/y epoch 3, not by model/x epoch last"):
        gallery.check_comparable({**PROVENANCE, "model": "model/y epoch 3", "checkpoint_sha256": "cd" * 32},
                                 index_meta, "q.mat")  # fmt: skip
    with pytest.raises(
        UserError, match=r"q.mat holds features extracted as .*scales 1,1.1.*use the same test-time"
    ):
        gallery.check_comparable({**PROVENANCE, "extraction": "image + flip, scales 1,1.1, 64x32, float32"},
                                 index_meta, "q.mat")  # fmt: skip
    assert "does not say which model wrote it" in gallery.check_comparable({}, index_meta, "q.mat")


# ----------------------------------------------------------------------------------------------------
# The threshold.


def unit(cos: float, axis: int, dim: int = 6) -> np.ndarray:
    """A unit vector whose cosine with e_0 is `cos`, the rest along e_axis."""
    row = np.zeros(dim, dtype=np.float32)
    row[0], row[axis] = cos, np.sqrt(1 - cos**2)
    return row


def test_best_distances_hand_case():
    # Query 0 (id 1, camera 1) = e_0. Gallery: id 1 cam 1 (junk, nearest), id 2 (other person), id 1
    # cam 2 (true match), label -1 (junk), id 0 (distractor: another person).
    g_f = np.stack([unit(0.99, 1), unit(0.9, 2), unit(0.8, 3), unit(0.98, 4), unit(0.5, 5)])
    g_pid, g_cam = np.array([1, 2, 1, -1, 0]), np.array([1, 1, 2, 3, 2])
    q_f = np.stack([unit(1.0, 1), unit(0.5, 5)])  # query 1 (id 0, camera 1) is the distractor's twin
    best = gallery.best_distances(q_f, np.array([1, 0]), np.array([1, 1]), g_f, g_pid, g_cam)
    d = lambda cos: np.sqrt(2 - 2 * cos)
    assert best["true"][0] == pytest.approx(d(0.8), abs=1e-6)  # the junk images are left out
    assert best["impostor"][0] == pytest.approx(d(0.9), abs=1e-6)  # its nearest other person
    assert not best["first_true"][0]  # the other person comes first
    assert best["true"][1] == 0 and best["first_true"][1]
    assert best["impostor"][1] == pytest.approx(d(0.5 * 0.99), abs=1e-6)  # id 1's junk is its impostor


def test_threshold_rule_hand_case():
    impostor = np.array([0.9, 0.5, 0.7, 0.6, 0.8, 1.0, 1.1, 1.2, 1.3, 1.4])
    # 10% of 10 = 1 false match allowed: midway between the 1st (0.5) and 2nd (0.6) smallest.
    assert gallery.threshold_at(impostor, 0.1) == pytest.approx(0.55)
    assert gallery.threshold_at(impostor, 0.25) == pytest.approx(0.65)  # k = 2: between 0.6 and 0.7
    assert gallery.threshold_at(impostor, 0.01) == np.nextafter(0.5, 0)  # k = 0: just below the nearest
    assert gallery.threshold_at(np.array([0.5, 0.5, 0.5, 0.9]), 0.5) == pytest.approx(np.nextafter(0.5, 0))
    assert gallery.threshold_at(np.array([0.3, 0.5, 0.5, 0.9]), 0.5) == pytest.approx(0.4)  # ties: below them
    best = {
        "true": np.array([0.2, 0.3, 0.7, np.inf]),
        "impostor": np.array([0.5, 0.25, 0.9, 0.4]),
        "first_true": np.array([True, False, True, False]),
    }
    rates = gallery.rates_at(best, 0.45)
    # Absent: 0.25 and 0.4 are within 0.45 (2 of 4). Present (3 with a true match): query 0 answers its
    # true match at 0.2; query 1 answers another person at 0.25; query 2's best, 0.7, is beyond.
    assert rates == {"false_match": 0.5, "true_match": pytest.approx(1 / 3), "answered": pytest.approx(2 / 3)}
    calibration = gallery.calibrate(best, 0.25)
    assert calibration["threshold"] == pytest.approx((0.25 + 0.4) / 2)
    assert calibration["false_match_rate"] == 0.25 and calibration["n_with_true_match"] == 3
    assert not calibration["too_few_queries"] and gallery.calibrate(best, 0.01)["too_few_queries"]
    assert gallery.is_match(0.45, 0.45) and not gallery.is_match(0.4500001, 0.45)
    table = gallery.roc_table(best, rates=(0.25, 0.5)).splitlines()
    assert table[1].split() == ["25.0%", "0.3250", "25.00%", "33.33%", "66.67%"]


def test_held_out_note_when_the_rate_strays():
    steady = [{"false_match": 0.012, "true_match": 0.5}, {"false_match": 0.004, "true_match": 0.4}]
    assert "note" not in gallery.describe_held_out(steady, 0.01, 500)
    assert (
        "false-match rate mean 0.8%, from 0.4% to 1.2%; true-match rate mean 45.0%"
        in gallery.describe_held_out(steady, 0.01, 500)
    )
    stray = [*steady, {"false_match": 0.127, "true_match": 0.6}]
    assert "strays more than 2 points from 1.0%" in gallery.describe_held_out(stray, 0.01, 100)
