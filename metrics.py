"""The Market-1501 evaluation protocol: CMC Rank@k, mAP (two AP rules) and mINP, written once.

**Protocol.** For each query, the gallery images of the same person id taken by the same camera, and
the junk images (label -1), are ignored: they are removed from the ranking (`protocol_masks`). A true
match is an image of the query's id from another camera; every other kept image, distractors
included, is a wrong match. The gallery is ranked by distance, smaller first; equal distances keep
the gallery order. With r_1 < r_2 < ... < r_n the 1-based ranks of the n true matches among the kept
images:

    Rank@k                  1 if r_1 <= k else 0 (the CMC curve at k)
    AP, Market-1501 rule    (1/n) * sum_i (p_old_i + p_i) / 2, with p_i = i / r_i and
                            p_old_i = (i - 1) / (r_i - 1), or 1 when r_i = 1
                            (the trapezoid rule of the official Market-1501 evaluation code,
                            compute_AP.m, which the classic evaluate_gpu.py reproduces)
    AP, non-interpolated    (1/n) * sum_i i / r_i (the mean of the precision at each true match;
                            what torchreid and fast-reid report)
    INP                     n / r_n (Ye et al., "Deep Learning for Person Re-identification: A Survey
                            and Outlook", TPAMI 2021: the precision at the hardest true match)

Rank@k, mAP and mINP are the means over the queries that have at least one true match; the other
queries are left out of every mean and counted (`n_skipped`). Label 0 is not special-cased: a query
of id 0 (Market-1501 has none; in MSMT17 `0000` is a real person) matches gallery images of id 0 from
other cameras, as in the classic code; for every other query, distractors are wrong matches.

**Distance.** The features are unit vectors; the evaluation ranks by -q.g (`feature_distance_chunks`),
which orders the gallery exactly as the Euclidean distance |q - g| = sqrt(2 - 2 q.g) does, without the
rounding that computing 2 - 2 q.g in float32 adds. Figures and thresholds show the Euclidean distance
(`euclidean`), from 0 to 2.

**Code.** `match_ranks` is the readable ranking: sort every gallery row, a match matrix, cumulative
sums (the shape of reid-strong-baseline's eval_func). `match_ranks_fast` gives the same result by
sorting only the head of each ranking, about 6 times faster; `evaluate` uses it by default and a test
holds the two equal. Both work on chunks of queries (`query_chunk_rows`), so memory stays bounded.

The bottom of the module is what the three evaluate scripts share: their options, the query sets of
a features file (single-query, multi-query), and the printed result block.
"""

import argparse
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from features import (
    PROVENANCE_KEYS,
    add_result_file_arg,
    degenerate_rows,
    describe_provenance,
    load_features,
    multi_query_features,
)
from utils import atomic_write

# ----------------------------------------------------------------------------------------------------
# The protocol and the readable ranking.


def protocol_masks(q_pid, q_cam, g_pid, g_cam) -> tuple[np.ndarray, np.ndarray]:
    """The Market-1501 rule for a chunk of queries: (good, junk), boolean (c, n_g).

    good: the query's id from another camera (true matches); junk: the query's id from the query's
    camera, or gallery label -1 (ignored). q_pid, q_cam: (c,); g_pid, g_cam: (n_g,).
    """
    same_pid = np.asarray(q_pid)[:, None] == g_pid
    junk = same_pid & (np.asarray(q_cam)[:, None] == g_cam)
    junk |= g_pid == -1
    good = same_pid & ~junk
    return good, junk


def match_ranks(dist: np.ndarray, good: np.ndarray, junk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each query's true matches land: (row, rank) of every true match, sorted by row then rank.

    dist, good, junk: (c, n_g). `rank` is the 1-based rank among the kept (not junk) images of the
    gallery sorted by distance, ties in gallery order.
    """
    order = np.argsort(dist, axis=1, kind="stable")  # (c, n_g): gallery indices, nearest first
    is_match = np.take_along_axis(good, order, axis=1)  # the match matrix, in ranked order
    kept = ~np.take_along_axis(junk, order, axis=1)
    rank = np.cumsum(kept, axis=1)  # at each position: kept images up to it, itself included
    rows, positions = np.nonzero(is_match)
    return rows, rank[rows, positions]


def top_k(dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest gallery images of each query, as match_ranks ranks them (ties in gallery order):
    their indices (c, k) and distances (c, k), nearest first. dist: (c, n_g); k <= n_g.

    A partition finds each row's k-th smallest distance; only the images up to it (ties with it
    included) are sorted, by (distance, gallery index), so a row costs O(n_g), not a full sort.
    """
    n_rows, n_g = dist.shape
    if k >= n_g:
        order = np.argsort(dist, axis=1, kind="stable")
        return order, np.take_along_axis(dist, order, axis=1)
    kth = np.partition(dist, k - 1, axis=1)[:, k - 1 : k]  # (c, 1)
    rows, cols = np.nonzero(dist <= kth)  # at least k per row
    values = dist[rows, cols]
    order = np.lexsort((cols, values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    count = np.bincount(rows, minlength=n_rows)
    keep = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count) < k
    return cols[keep].reshape(n_rows, k), values[keep].reshape(n_rows, k)


def query_metrics(rows: np.ndarray, rank: np.ndarray, n_queries: int) -> dict:
    """Per-query numbers (n_queries,) from the (row, rank) of every true match (see match_ranks):
    n_good, first_rank (0 without a match), ap_market, ap and inp (0 without a match)."""
    n_good = np.bincount(rows, minlength=n_queries)
    first = np.cumsum(n_good) - n_good  # where each query's matches start in `rows`
    i = np.arange(1, len(rows) + 1) - np.repeat(first, n_good)  # 1-based index among its query's matches
    precision = i / rank
    precision_old = np.where(rank == 1, 1.0, (i - 1) / np.maximum(rank - 1, 1))
    has = n_good > 0
    first_rank = np.zeros(n_queries, dtype=np.int64)
    first_rank[has] = rank[first[has]]
    inp = np.zeros(n_queries)
    inp[has] = n_good[has] / rank[first[has] + n_good[has] - 1]
    per_query = np.maximum(n_good, 1)
    return {
        "n_good": n_good,
        "first_rank": first_rank,
        "ap_market": np.bincount(rows, (precision_old + precision) / 2, minlength=n_queries) / per_query,
        "ap": np.bincount(rows, precision, minlength=n_queries) / per_query,
        "inp": inp,
    }


# ----------------------------------------------------------------------------------------------------
# The fast ranking: the same result, sorting only the head of each ranking.


def sortable_bits(values: np.ndarray) -> np.ndarray:
    """uint32 codes of `values` as float32, in the same order (a new array; NaN is not supported).

    The IEEE bits of a float order like its value once negative numbers have all their bits flipped
    and the others their sign bit; adding 0 first turns -0.0 into +0.0, so the two zeros tie.
    """
    bits = np.add(values, 0, dtype=np.float32).view(np.uint32)
    flip = (bits.view(np.int32) >> 31).view(np.uint32)  # all ones for negative numbers, else zeros
    flip |= np.uint32(0x80000000)
    bits ^= flip
    return bits


def match_ranks_fast(dist: np.ndarray, good: np.ndarray, junk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """match_ranks, without sorting whole rows.

    Only the head of each ranking matters: the kept images up to the farthest true match (the order
    past it changes no metric). So only those are sorted, by one sort of uint64 keys
    (row, distance as sortable bits, gallery index); the index breaks ties in gallery order.
    """
    n_rows, n_g = dist.shape
    farthest = np.where(good, dist, -np.inf).max(axis=1)  # (c,): distance of the farthest true match
    in_head = dist <= farthest[:, None]
    in_head &= ~junk
    head = np.flatnonzero(in_head)
    row, col = np.divmod(head, n_g)
    col_bits, row_bits = n_g.bit_length(), n_rows.bit_length()
    if row_bits + 32 + col_bits > 64:
        raise ValueError(f"a distance chunk of {n_rows} x {n_g} is too large; split the queries")
    key = row.astype(np.uint64) << np.uint64(32 + col_bits)
    key |= sortable_bits(dist.ravel()[head]).astype(np.uint64) << np.uint64(col_bits)
    key |= col.astype(np.uint64)
    key.sort()
    row = (key >> np.uint64(32 + col_bits)).astype(np.int64)
    col = (key & np.uint64((1 << col_bits) - 1)).astype(np.int64)
    count = np.bincount(row, minlength=n_rows)
    position = np.arange(len(key)) - np.repeat(np.cumsum(count) - count, count)
    match = good[row, col]
    return row[match], position[match] + 1


# ----------------------------------------------------------------------------------------------------
# Distances and the metric.


def query_chunk_rows(n_gallery: int) -> int:
    """Queries per chunk: about 4M distances, so a chunk's working arrays stay near 100 MB."""
    return max(1, (1 << 22) // max(1, n_gallery))


def feature_distance_chunks(q_f: np.ndarray, g_f: np.ndarray) -> Iterator[np.ndarray]:
    """Distances -q.g (rows, n_g) of consecutive query chunks: the ranking distance of unit features."""
    rows = query_chunk_rows(len(g_f))
    for start in range(0, len(q_f), rows):
        dist = q_f[start : start + rows] @ g_f.T
        yield np.negative(dist, out=dist)


def row_chunks(dist: np.ndarray) -> Iterator[np.ndarray]:
    """A whole distance matrix (n_q, n_g) as consecutive chunks of `query_chunk_rows` queries."""
    rows = query_chunk_rows(dist.shape[1])
    return (dist[start : start + rows] for start in range(0, len(dist), rows))


def euclidean(neg_cos: np.ndarray) -> np.ndarray:
    """The Euclidean distance sqrt(2 - 2 q.g) of unit features, float64, from the ranking distance -q.g."""
    return np.sqrt(np.clip(2 + 2 * np.asarray(neg_cos, dtype=np.float64), 0, None))


PER_QUERY_TOP = 10  # nearest gallery images kept per query by evaluate(per_query=True)


def _chunk_metrics(dist, q_pid, q_cam, g_pid, g_cam, start: int, ranks, per_query: bool) -> dict:
    """query_metrics of the chunk of queries `start`..: dist (c, n_g), q_pid and q_cam (c,); with
    `per_query`, also the indices of each query's nearest gallery images, `top` (c, PER_QUERY_TOP)."""
    dist = np.asarray(dist)
    if np.isnan(dist).any():
        raise ValueError(f"the distances of the queries {start}..{start + len(dist) - 1} contain NaN")
    good, junk = protocol_masks(q_pid, q_cam, g_pid, g_cam)
    out = query_metrics(*ranks(dist, good, junk), len(dist))
    # A wrong match at exactly the distance of the first true match: the gallery order decides.
    first = np.where(good, dist, np.inf).min(axis=1)
    out["tied"] = (~good & ~junk & (dist == first[:, None])).any(axis=1)
    if per_query:
        out["top"] = top_k(dist, min(PER_QUERY_TOP, dist.shape[1]))[0]
    return out


def evaluate(
    dist_chunks: Iterable[np.ndarray],
    q_pid: np.ndarray,
    q_cam: np.ndarray,
    g_pid: np.ndarray,
    g_cam: np.ndarray,
    max_rank: int = 50,
    fast: bool = True,
    per_query: bool = False,
) -> dict:
    """CMC, mAP (both rules) and mINP of a ranking, by the Market-1501 protocol (module docstring).

    dist_chunks: distances (c_t, n_g), smaller = more similar, of consecutive chunks of the n_q queries
        (e.g. `feature_distance_chunks(q_f, g_f)`), compared as float32; NaN is an error.
    q_pid, q_cam: (n_q,) person ids and cameras of the queries; g_pid, g_cam: (n_g,) of the gallery.
    fast: rank with match_ranks_fast (the default) or the readable match_ranks; the results are equal.
    per_query: also return `per_query`, a dict of numpy arrays for error analysis: the numbers of each
        query (n_q,) `n_good`, `first_rank` (0 without a true match), `ap_market`, `ap`, `inp`, and
        `top` (n_q, PER_QUERY_TOP), the indices of its nearest gallery images, ties in gallery order.

    Returns a dict of floats: `rank1`, `rank5`, `rank10`, `cmc` (Rank@1..Rank@max_rank), `mAP_market1501`,
    `mAP` (non-interpolated), `mINP`, and the counts `n_query`, `n_gallery`, `n_evaluated`, `n_skipped`
    and `n_tied` (evaluated queries whose first true match ties with a wrong match: ranked by gallery
    order, their Rank@k and AP depend on the file's order).

    The chunks are ranked in two worker threads (numpy releases the GIL in its array loops and sorts),
    so ranking overlaps with computing the next chunk; at most four chunks are alive at once.
    """
    q_pid, q_cam, g_pid, g_cam = (np.asarray(a).reshape(-1) for a in (q_pid, q_cam, g_pid, g_cam))
    n_q, n_g = len(q_pid), len(g_pid)
    if n_q == 0 or n_g == 0:
        raise ValueError(f"nothing to evaluate: {n_q} queries, {n_g} gallery images")
    ranks = match_ranks_fast if fast else match_ranks
    chunks = []
    workers = min(2, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque()
        start = 0
        for dist in dist_chunks:
            stop = start + len(dist)
            if np.ndim(dist) != 2 or np.shape(dist)[1] != n_g or stop > n_q:
                raise ValueError(
                    f"distance chunk of shape {np.shape(dist)} for queries {start}.. of {n_q} x {n_g}"
                )
            q = slice(start, stop)
            pending.append(
                pool.submit(_chunk_metrics, dist, q_pid[q], q_cam[q], g_pid, g_cam, start, ranks, per_query)
            )
            start = stop
            while len(pending) > workers:
                chunks.append(pending.popleft().result())
        while pending:
            chunks.append(pending.popleft().result())
    if start != n_q:
        raise ValueError(f"the distance chunks cover {start} queries, expected {n_q}")
    by_query = {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
    n_good, first_rank = by_query["n_good"], by_query["first_rank"]

    valid = n_good > 0
    n_valid = int(valid.sum())

    def mean(x):
        return float(np.mean(x[valid])) if n_valid else 0.0

    cmc = [mean(first_rank <= k) for k in range(1, max_rank + 1)]
    results = {
        "rank1": cmc[0],
        "rank5": cmc[min(4, max_rank - 1)],
        "rank10": cmc[min(9, max_rank - 1)],
        "mAP_market1501": mean(by_query["ap_market"]),
        "mAP": mean(by_query["ap"]),
        "mINP": mean(by_query["inp"]),
        "cmc": cmc,
        "n_query": n_q,
        "n_gallery": n_g,
        "n_evaluated": n_valid,
        "n_skipped": n_q - n_valid,
        "n_tied": int(by_query["tied"][valid].sum()),
    }
    if per_query:
        results["per_query"] = by_query
    return results


# ----------------------------------------------------------------------------------------------------
# What the evaluate scripts share: options, the query sets, the result block.


def evaluation_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of an evaluate script (evaluate.py, evaluate_gpu.py, evaluate_rerank.py)."""
    from utils import HelpFormatter

    parser = argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
    group = parser.add_argument_group("evaluation")
    add_result_file_arg(group)
    group.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    which = group.add_mutually_exclusive_group()
    which.add_argument(
        "--multi",
        action="store_true",
        help="only the multi-query result: each query is the mean of the multi-query features of its id "
        "and camera (needs test.py --multi). Without --multi or --single, a file with multi-query "
        "features gets both results, single-query first",
    )
    which.add_argument("--single", action="store_true", help="only the single-query result")
    group.add_argument(
        "--html",
        metavar="DIR",
        help="also write a report to this folder: index.html with the metrics, the CMC curve and the "
        "queries of lowest AP with their top 10, for error analysis",
    )
    return parser


def query_sets(feats: dict, args) -> list[tuple[dict, np.ndarray]]:
    """The query features to evaluate, each with what the output says of it: (info, q_f (n_q, d)).

    Single-query (the query features), then multi-query (see features.multi_query_features) when
    the file has multi-query features; `--single` or `--multi` keeps only one.
    """
    sets = []
    if not args.multi:
        sets.append(({"protocol": "single-query"}, feats["query_f"]))
    if args.multi or ("mquery_f" in feats and not args.single):
        q_f, n_alone = multi_query_features(feats)
        info = {
            "protocol": "multi-query",
            "n_mquery": len(feats["mquery_f"]),
            "n_query_without_mquery": n_alone,
        }
        sets.append((info, q_f))
    return sets


def evaluate_file(args, distance_chunks: Callable, distance: str) -> list[dict]:
    """An evaluate script's work: load `--result_file`, and for each of its query sets (query_sets)
    rank the gallery with `distance_chunks(q_f, g_f)` (an iterable of distance chunks, see
    `evaluate`) and print the result block; write `--json`. `distance` names the distance in the
    output, after a first line on the model that wrote the file. Returns the results, one dict per
    query set.
    """
    feats = load_features(args.result_file)
    labels = feats["query_label"], feats["query_cam"], feats["gallery_label"], feats["gallery_cam"]
    about = {"result_file": str(args.result_file), "distance": distance, "model": ""}
    about.update({key: feats[key] for key in PROVENANCE_KEYS if key in feats})
    print(f"{args.result_file}: {describe_provenance(feats)}")
    for warning in degenerate_rows(feats, args.result_file):
        print(warning)
    runs, report = [], []
    for info, q_f in query_sets(feats, args):
        results = evaluate(distance_chunks(q_f, feats["gallery_f"]), *labels, per_query=bool(args.html))
        runs.append({**about, **info, **results})
        report.append((runs[-1], q_f, runs[-1].pop("per_query", None)))
        if runs[-1]["n_tied"]:
            print(
                f"warning: {runs[-1]['n_tied']} of {runs[-1]['n_evaluated']} queries have a wrong match at "
                "exactly the distance of their first true match; equal distances rank in gallery order, "
                "so their Rank@k and AP depend on the file's order"
            )
        print(format_results(runs[-1]))
    if args.json:
        # One query set: its results; both: the single-query results, the multi-query ones inside.
        write_json(args.json, runs[0] if len(runs) == 1 else {**runs[0], "multi_query": runs[1]})
    if args.html:
        from pages import evaluation_report  # matplotlib and PIL, only for the report

        print(f"wrote {evaluation_report(args.html, feats, args.result_file, report)}/index.html")
    return runs


def format_results(results: dict) -> str:
    """The result block every evaluate script prints; its second line is the classic one."""
    header = f"{results['result_file']}: {results['n_query']} queries x {results['n_gallery']} gallery, "
    header += results["protocol"]
    if results["protocol"] == "multi-query":
        header += (
            f" ({results['n_mquery']} multi-query images; {results['n_query_without_mquery']} queries "
            "without any keep their own feature)"
        )
    r = results
    return (
        f"{header}\n"
        f"Rank@1:{r['rank1']:.4f} Rank@5:{r['rank5']:.4f} Rank@10:{r['rank10']:.4f} "
        f"mAP:{r['mAP_market1501']:.4f}\n"
        f"mAP(Market-1501 rule):{r['mAP_market1501']:.4f} mAP(non-interpolated):{r['mAP']:.4f} "
        f"mINP:{r['mINP']:.4f}\n"
        f"queries evaluated:{r['n_evaluated']} skipped (no true match in the gallery):{r['n_skipped']}"
    )


def write_json(path: str, results: dict) -> None:
    """Write `results` (numbers, counts, file) as JSON, atomically."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")

    atomic_write(path, write)
