"""Evaluate a features file: Rank@1/5/10, mAP (Market-1501 rule and non-interpolated) and mINP.

Reads the features file written by test.py (`pytorch_result.mat`), ranks the gallery for each query by
the negative cosine similarity (numpy, on the CPU) and prints the Market-1501 metrics; `--json` also
writes them to a file. The metric is `metrics.evaluate`, shared with evaluate_gpu.py (torch
distances) and evaluate_rerank.py (re-ranked distances).

    python evaluate.py --result_file pytorch_result.mat --json results/market.json
"""

from metrics import evaluate_file, evaluation_parser, feature_distance_chunks
from utils import run_main


def main(argv=None) -> list[dict]:
    """Evaluate; return the results, one dict per query set (see metrics.evaluate_file)."""
    args = evaluation_parser(__doc__).parse_args(argv)
    return evaluate_file(args, feature_distance_chunks, "-q.g (numpy)")


if __name__ == "__main__":
    run_main(main)
