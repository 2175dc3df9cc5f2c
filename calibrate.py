"""Choose search.py's "no match" threshold on a labelled test set, for a target false-match rate.

Reads a features file of test.py (--result_file: the queries and gallery of a labelled test set, such
as the test split of your own people prepared by prepare.py). For each query it takes the distance
search answers with, the best one over the gallery, twice: with the query's identity in the gallery,
and with it removed, as for a person who is absent (gallery.py gives the details). It prints a table
of thresholds and the rates they give, writes a figure (--output), and, with --index, stores the
threshold for --false_match_rate in the gallery index, where search.py finds it. The features file
must come from the checkpoint that wrote the index, with the same extraction.

It also checks how well the threshold holds on people it was not calibrated on: --check_splits times,
the test identities are halved at random, the threshold calibrated on one half and measured on the
other. A 1% rate rests on a few of the closest look-alikes, so it needs hundreds of test identities:
with a hundred, the held-out rate can land anywhere from 0% to over 10%, and calibrate.py says so.

The rates hold for a gallery about the size of the test set's: the larger the gallery, the more
look-alikes an absent person meets, and the more of them are answered "match".

    python calibrate.py --result_file pytorch_result.mat --index my_index --false_match_rate 0.01
"""

import argparse
import os

import numpy as np

from features import add_result_file_arg, load_features
from gallery import (
    FALSE_MATCH_RATE,
    check_comparable,
    describe_calibration,
    describe_held_out,
    held_out_check,
    open_index,
    roc_table,
    write_meta,
)
from pages import calibration_report
from utils import HelpFormatter, run_main, setup_logging


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_result_file_arg(parser)
    parser.add_argument("--index", help="the gallery index (index.py) to store the threshold in")
    parser.add_argument(
        "--false_match_rate",
        type=float,
        default=FALSE_MATCH_RATE,
        help="the share of absent people the threshold may answer 'match'",
    )
    parser.add_argument("--output", default="calibration.png", help="the figure to write")
    parser.add_argument(
        "--check_splits",
        type=int,
        default=20,
        help="random halvings of the test identities for the held-out check (0: no check)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.false_match_rate < 1:
        parser.error(f"--false_match_rate {args.false_match_rate}: give a rate between 0 and 1, e.g. 0.01")
    return args


def main(argv=None) -> dict:
    """Calibrate; return the calibration (gallery.calibrate's dict)."""
    args = parse_args(argv)
    logger = setup_logging()
    index = open_index(args.index) if args.index else None
    feats = load_features(args.result_file)
    if index is not None:
        warning = check_comparable(feats, index.meta, args.result_file)
        if warning:
            logger.warning(warning)
    best, calibration = calibration_report(feats, args.result_file, args.false_match_rate, args.output)
    logger.info(roc_table(best))
    logger.info(describe_calibration(calibration))
    n_ids = len(np.unique(feats["query_label"]))
    if args.check_splits > 0 and n_ids >= 2:
        check = held_out_check(feats, args.false_match_rate, args.check_splits)
        logger.info(describe_held_out([held_out for *_, held_out, _ in check], args.false_match_rate, n_ids))
    logger.info(f"wrote {args.output}")
    if index is not None:
        stored = {
            **calibration,
            "result_file": os.path.abspath(args.result_file),
            "gallery_size": len(feats["gallery_f"]),
            "model": feats.get("model", ""),
        }
        write_meta(index.folder, {**index.meta, "threshold": stored})
        logger.info(f"stored threshold {calibration['threshold']:.4f} in {index.folder}: search.py uses it")
    return calibration


if __name__ == "__main__":
    run_main(main)
