"""Evaluate a features file after k-reciprocal re-ranking (Zhong et al., CVPR 2017).

Re-ranks the gallery of every query with `re_ranking.re_ranking` (the distance that mixes the Jaccard
distance of k-reciprocal neighbourhoods with the original distance) and prints the same metrics, in
the same format, as evaluate.py.

    python evaluate_rerank.py --result_file pytorch_result.mat --k1 20 --k2 6 --lambda_value 0.3
"""

import argparse

from evaluation import add_evaluation_args, evaluate, load_evaluation_set, query_chunk_rows, report
from re_ranking import check_params, re_ranking
from utils import HelpFormatter, UserError, run_main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_evaluation_args(parser)
    group = parser.add_argument_group("re-ranking")
    group.add_argument("--k1", type=int, default=20, help="size of the k-reciprocal neighbourhood")
    group.add_argument(
        "--k2", type=int, default=6, help="neighbours averaged by the local query expansion (1: none)"
    )
    group.add_argument(
        "--lambda_value", type=float, default=0.3, help="weight of the original distance (0: Jaccard only)"
    )
    args = parser.parse_args(argv)
    try:
        check_params(args.k1, args.k2, args.lambda_value)
    except ValueError as error:
        parser.error(f"--k1 {args.k1} --k2 {args.k2} --lambda_value {args.lambda_value}: {error}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    feats, q_f, info = load_evaluation_set(args)
    try:
        dist = re_ranking(q_f, feats["gallery_f"], args.k1, args.k2, args.lambda_value)
    except ValueError as error:  # the parameters are checked already: this is about the features
        raise UserError(f"{args.result_file}: {error}") from None
    rows = query_chunk_rows(dist.shape[1])
    dist_chunks = (dist[start : start + rows] for start in range(0, len(dist), rows))
    results = evaluate(
        dist_chunks, feats["query_label"], feats["query_cam"], feats["gallery_label"], feats["gallery_cam"]
    )
    distance = f"k-reciprocal re-ranking (k1={args.k1}, k2={args.k2}, lambda={args.lambda_value})"
    report({**info, "distance": distance, **results}, args.json)


if __name__ == "__main__":
    run_main(main)
