"""The straightforward per-query evaluation, kept as the baseline that bench_evaluate.py times.

The whole (n_q, n_g) distance matrix by one matrix product, then for each query, in a Python loop: a
stable argsort of its row, the junk images dropped, the true matches found, and the two APs added up
match by match (the per-query structure of the classic evaluate_gpu.py). Prints the same result block
as evaluate.py, so the two can be compared line by line.

    python bench/baseline_evaluate.py --result_file /tmp/market.mat
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from features import load_features
from metrics import format_results


def evaluate_query(dist, q_pid, q_cam, g_pid, g_cam):
    """(first rank, AP Market-1501 rule, AP non-interpolated, INP) of one query, or None without a match."""
    order = np.argsort(dist, kind="stable")
    junk = (g_pid[order] == -1) | ((g_pid[order] == q_pid) & (g_cam[order] == q_cam))
    order = order[~junk]
    ranks = np.flatnonzero(g_pid[order] == q_pid) + 1  # after dropping the junk, every same id is a match
    n = len(ranks)
    if n == 0:
        return None
    ap_market = ap = 0.0
    for i, r in enumerate(ranks, start=1):
        precision = i / r
        precision_old = 1.0 if r == 1 else (i - 1) / (r - 1)
        ap_market += (precision_old + precision) / 2 / n
        ap += precision / n
    return ranks[0], ap_market, ap, n / ranks[-1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--result_file", default="pytorch_result.mat", help="features file written by test.py"
    )
    args = parser.parse_args(argv)
    feats = load_features(args.result_file)
    g_f, g_pid, g_cam = feats["gallery_f"], feats["gallery_label"], feats["gallery_cam"]
    dist = -(feats["query_f"] @ g_f.T)
    per_query = []
    for q_dist, q_pid, q_cam in zip(dist, feats["query_label"], feats["query_cam"]):
        result = evaluate_query(q_dist, q_pid, q_cam, g_pid, g_cam)
        if result is not None:
            per_query.append(result)
    first, ap_market, ap, inp = (np.array(x) for x in zip(*per_query))
    results = {
        "result_file": args.result_file,
        "protocol": "single-query",
        "n_query": len(feats["query_f"]),
        "n_gallery": len(g_f),
        "rank1": np.mean(first <= 1),
        "rank5": np.mean(first <= 5),
        "rank10": np.mean(first <= 10),
        "mAP_market1501": np.mean(ap_market),
        "mAP": np.mean(ap),
        "mINP": np.mean(inp),
        "n_evaluated": len(per_query),
        "n_skipped": len(feats["query_f"]) - len(per_query),
    }
    print(format_results(results))


if __name__ == "__main__":
    main()
