"""Evaluate a features file: Rank@1/5/10, mAP (Market-1501 rule and non-interpolated) and mINP.

Reads the features file written by test.py (`pytorch_result.mat`), ranks the gallery for each query by
the negative cosine similarity (numpy, on the CPU) and prints the Market-1501 metrics; `--json` also
writes them to a file. The metric is `evaluation.evaluate`, shared with evaluate_gpu.py (torch
distances) and evaluate_rerank.py (re-ranked distances).

    python evaluate.py --result_file pytorch_result.mat --json results/market.json
"""

import argparse

from evaluation import add_evaluation_args, evaluate, feature_distance_chunks, load_evaluation_set, report
from utils import HelpFormatter, run_main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_evaluation_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    feats, q_f, info = load_evaluation_set(args)
    dist_chunks = feature_distance_chunks(q_f, feats["gallery_f"])
    results = evaluate(
        dist_chunks, feats["query_label"], feats["query_cam"], feats["gallery_label"], feats["gallery_cam"]
    )
    report({**info, "distance": "-q.g (numpy)", **results}, args.json)


if __name__ == "__main__":
    run_main(main)
