"""Evaluate a features file after k-reciprocal re-ranking (Zhong et al., CVPR 2017).

Re-ranks the gallery of every query with `re_ranking.re_ranking` (the distance that mixes the Jaccard
distance of k-reciprocal neighbourhoods with the original distance) and prints the same metrics, in
the same format, as evaluate.py.

    python evaluate_rerank.py --result_file pytorch_result.mat --k1 20 --k2 6 --lambda_value 0.3
"""

import argparse

from metrics import evaluate_file, evaluation_parser, row_chunks
from re_ranking import check_params, re_ranking
from utils import UserError, run_main


def parse_args(argv=None) -> argparse.Namespace:
    parser = evaluation_parser(__doc__)
    group = parser.add_argument_group("re-ranking")
    group.add_argument("--k1", type=int, default=20, help="size of the k-reciprocal neighbourhood")
    group.add_argument(
        "--k2", type=int, default=6, help="neighbours averaged by the local query expansion (1: none)"
    )
    group.add_argument(
        "--lambda_value",
        type=float,
        default=0.3,
        help="weight of the original distance, above 0 (it orders the images the Jaccard distance ties)",
    )
    args = parser.parse_args(argv)
    try:
        check_params(args.k1, args.k2, args.lambda_value)
    except ValueError as error:
        parser.error(f"--k1 {args.k1} --k2 {args.k2} --lambda_value {args.lambda_value}: {error}")
    if args.lambda_value == 0:
        parser.error(
            "--lambda_value 0 ranks by the Jaccard distance alone, which ties most of the gallery (every "
            "image sharing no neighbour with the query is at 1), so the result would depend on the file "
            "order: give a positive lambda (the paper's 0.3; 0.01 is almost Jaccard only)"
        )
    return args


def main(argv=None) -> list[dict]:
    """Evaluate; return the results, one dict per query set (see metrics.evaluate_file)."""
    args = parse_args(argv)

    def re_ranked(q_f, g_f):
        try:
            return row_chunks(re_ranking(q_f, g_f, args.k1, args.k2, args.lambda_value))
        except ValueError as error:  # the parameters are checked already: this is about the features
            raise UserError(f"{args.result_file}: {error}") from None

    distance = f"k-reciprocal re-ranking (k1={args.k1}, k2={args.k2}, lambda={args.lambda_value})"
    return evaluate_file(args, re_ranked, distance)


if __name__ == "__main__":
    run_main(main)
