"""bench/bench_threshold.py and bench/bench_search.py: their pieces on hand-made features, and each
whole benchmark with short settings (the real runs take minutes; their output is in bench/logs/)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_search
import bench_threshold
import gallery
from common import shell_commands

SHORT = {
    "tools/synthetic.py": ["--num_ids", "16"],
    "train.py": ["--total_epoch", "1", "--height", "64", "--width", "32", "--batchsize", "8"],
}


def clustered(
    n_ids: int, per_id: int, seed: int, dim: int = 16, spread: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim))
    pid = np.repeat(np.arange(1, n_ids + 1), per_id)
    f = centres[pid - 1] + spread * rng.standard_normal((len(pid), dim))
    return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32), pid


def features_file(seed: int = 0) -> dict:
    q_f, q_pid = clustered(40, 1, seed)
    g_f, g_pid = clustered(40, 3, seed + 100)
    g_pid = np.concatenate([g_pid, [0, 0, -1, -1]])  # distractors and junk, shared out
    g_f = np.concatenate([g_f, clustered(4, 1, seed + 7)[0]])
    return {"query_f": q_f, "query_label": q_pid, "query_cam": np.ones(40, int), "gallery_f": g_f,
            "gallery_label": g_pid, "gallery_cam": np.full(len(g_pid), 2)}  # fmt: skip


def test_halves_are_disjoint_and_cover_the_test_set():
    feats = features_file()
    a, b = gallery.halve(feats, np.random.default_rng(0))
    assert not set(a["query_label"]) & set(b["query_label"])
    assert len(a["query_f"]) + len(b["query_f"]) == 40 and len(a["query_f"]) == 20
    assert len(a["gallery_f"]) + len(b["gallery_f"]) == len(feats["gallery_f"])
    assert set(a["gallery_label"]) - {0, -1} == set(a["query_label"])  # each half's people, and some shared


def test_measure_calibrates_on_one_half_and_measures_the_other():
    feats = features_file()
    noise = clustered(5, 1, 99)[0]
    [run] = bench_threshold.measure(feats, noise, 0.05, 1, 1)
    assert run["n_query"] == (20, 20)
    assert (
        0 <= run["held_out"]["false_match"] <= 1 and 0 <= run["noise"] <= 1 and 0 <= run["noise_people"] <= 1
    )
    assert run["calibration"]["false_match_rate"] <= 0.05
    # The pair statistic accepts far more absent people: 5% of pairs is a loose threshold for a best distance.
    assert (
        run["pair"]["threshold"] > run["threshold"]
        and run["pair"]["held_out"] > run["held_out"]["false_match"]
    )
    rates = [r for *_, r, _ in gallery.held_out_check(feats, 0.05, 3, seed=1)]
    assert rates[0] == run["held_out"]  # the same halving from the same seed
    line = gallery.describe_held_out(rates, 0.05, 40)
    assert line.startswith("held-out check, 3 random halvings of the 40 test identities")


def test_bench_threshold_short_run(monkeypatch, tmp_path, capsys):
    def commands(text, prefix):
        return [argv + SHORT.get(argv[0], []) for argv in shell_commands(text, prefix)]

    monkeypatch.setattr(bench_threshold, "shell_commands", commands)
    runs = bench_threshold.main(
        ["--splits", "2", "--noise", "4", "--test_ids", "6", "--keep", str(tmp_path / "run")]
    )
    out = capsys.readouterr().out
    assert out.startswith("$ python bench/bench_threshold.py --splits 2 --noise 4 --test_ids 6 --keep")
    assert len(runs) == 2 and "split  2:" in out and "the old pair threshold" in out
    assert "noise images answered 'match' (4 per split)" in out and "machine:" in out
    assert (tmp_path / "run" / "model" / "quickstart" / "net_last.pth").is_file()


def test_bench_threshold_skips_without_cuhk01(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench_threshold, "DATA_DIR", tmp_path / "nowhere")
    assert bench_threshold.main(["--dataset", "cuhk01"]) is None
    assert capsys.readouterr().out.startswith("bench_threshold.py: skipped, no ")


def test_bench_search_short_run(tmp_path, capsys):
    methods = "exact,faiss_exact,faiss_ivf" if importlib.util.find_spec("faiss") else "exact"
    bench_search.main(["--size", "2000", "--repeat", "2", "--crops", "24", "--height", "64", "--width", "32",
                       "--keep", str(tmp_path / "run"), "--methods", methods])  # fmt: skip
    out = capsys.readouterr().out
    assert "exact: index of 2,000 features, 512-d: " in out and "exact: equal to a full sort" in out
    if methods != "exact":
        assert "faiss_exact: index of 2,000 features" in out and out.count("exact: equal to a full sort") == 2
        assert (
            "faiss_ivf, 51 lists, " in out
            and " read per query (target recall@10 0.95): built in" in out
            and "recall@10 of the 100 queries: " in out
        )
    assert "indexing 24 crops (resnet18 64x32, image + flip, float32)" in out
    assert "indexed 24 images with model/bench epoch last" in out


@pytest.mark.parametrize("script", [bench_search, bench_threshold])
def test_help(script, capsys):
    with pytest.raises(SystemExit):
        script.main(["--help"])
    assert "python bench/" in capsys.readouterr().out
