"""Evaluation library: the features file, the Market-1501 metric, the evaluate scripts' options and output.

The features file (`pytorch_result.mat` by default) is written by test.py with `save_features` and read
by evaluate.py, evaluate_gpu.py, evaluate_rerank.py and demo.py with `load_features`. It is a MATLAB
.mat file with the classic keys:

    query_f (n_q, d) float32, query_label (n_q,) int, query_cam (n_q,) int    required
    gallery_f (n_g, d), gallery_label (n_g,), gallery_cam (n_g,)               required
    mquery_f (n_m, d), mquery_label (n_m,), mquery_cam (n_m,)                  multi-query (test.py --multi)
    query_path, gallery_path: lists of image paths                            optional (for demo.py)
    model: a string naming the model and epoch                                optional

Feature rows are L2-normalised. Labels: -1 = junk image, 0 = distractor (Market-1501 naming).

The metric (`evaluate`) follows the Market-1501 protocol. For each query, the gallery images of the
same person id taken by the same camera, and the junk images (label -1), are ignored: they are
removed from the ranking. A true match is an image of the query's id from another camera; every other
kept image, distractors included, is a wrong match. With r_1 < r_2 < ... < r_n the 1-based ranks of
the n true matches among the kept images (smaller distance first):

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

Ties: the gallery is ranked by a stable sort of float32 distances, so images at equal distance keep
the gallery order (the same result as `np.argsort(dist, kind="stable")`).
"""

import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.io

from utils import UserError, atomic_write

# ----------------------------------------------------------------------------------------------------
# The features file.

SETS = ("query", "gallery", "mquery")  # the multi-query set is optional
PATH_KEYS = ("query_path", "gallery_path")
KNOWN_KEYS = {f"{s}_{field}" for s in SETS for field in ("f", "label", "cam")} | set(PATH_KEYS) | {"model"}
REDO = "run test.py to write it again"


def _vector(value, name: str, where: str, fix: str) -> np.ndarray:
    """A label or camera array as int64 of shape (n,); .mat files store vectors as (1, n)."""
    array = np.asarray(value)
    if array.ndim > 2 or (array.ndim == 2 and min(array.shape) > 1):
        raise UserError(f"{where}: {name} has shape {array.shape}, expected a vector; {fix}")
    array = array.reshape(-1)
    if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.all(array == np.round(array))):
        raise UserError(f"{where}: {name} must hold integers, found {array.dtype}; {fix}")
    return array.astype(np.int64)


def _paths(value, name: str, where: str, fix: str) -> list[str]:
    """Image paths as a list of str, from a list, a cell array (object array) or a char matrix."""
    if isinstance(value, (list, tuple)):
        return [str(p) for p in value]
    array = np.asarray(value)
    if array.dtype.kind == "U":  # a char matrix: MATLAB pads the rows with spaces
        return [str(p).rstrip() for p in array.reshape(-1)]
    if array.dtype == object:  # a cell array: each cell loads as a 1-element array (or an empty one)
        return [str(np.asarray(p).reshape(-1)[0]) if np.size(p) else "" for p in array.reshape(-1)]
    raise UserError(f"{where}: {name} must hold strings, found {array.dtype}; {fix}")


def _text(value) -> str:
    if isinstance(value, str):
        return value
    array = np.asarray(value).reshape(-1)
    return str(array[0]) if array.size else ""


def _check_features(feats: dict, where: str, fix: str) -> dict:
    """Return `feats` with canonical types and shapes, or raise UserError: "{where}: {problem}; {fix}"."""
    missing = [
        f"{s}_{field}" for s in SETS[:2] for field in ("f", "label", "cam") if f"{s}_{field}" not in feats
    ]
    multi = [k for k in feats if k.startswith("mquery_")]
    if multi:
        missing += [f"mquery_{field}" for field in ("f", "label", "cam") if f"mquery_{field}" not in feats]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)}; {fix}")
    out, dim = {}, None
    for s in SETS if multi else SETS[:2]:
        f = np.asarray(feats[f"{s}_f"])
        if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0 or f.dtype.kind not in "iuf":
            raise UserError(
                f"{where}: {s}_f must be a non-empty (n, d) array of numbers, "
                f"found {f.dtype} {f.shape}; {fix}"
            )
        f = np.ascontiguousarray(f, dtype=np.float32)  # .mat files load in column-major order
        if dim is not None and f.shape[1] != dim:
            raise UserError(f"{where}: {s}_f has {f.shape[1]}-d features but query_f has {dim}-d; {fix}")
        dim = f.shape[1]
        for field in ("label", "cam"):
            out[f"{s}_{field}"] = _vector(feats[f"{s}_{field}"], f"{s}_{field}", where, fix)
            if len(out[f"{s}_{field}"]) != len(f):
                raise UserError(
                    f"{where}: {s}_f has {len(f)} rows but {s}_{field} has {len(out[f'{s}_{field}'])} "
                    f"entries; {fix}"
                )
        bad = np.flatnonzero(~np.isfinite(f).all(axis=1))
        if len(bad):
            raise UserError(f"{where}: {s}_f has {len(bad)} rows with NaN or inf (row {bad[0]} first); {fix}")
        # Unit rows, or all-zero rows (test.py's normalisation leaves an all-zero embedding at zero).
        norms = np.linalg.norm(f, axis=1)
        bad = np.flatnonzero((np.abs(norms - 1) > 1e-3) & (norms != 0))
        if len(bad):
            raise UserError(
                f"{where}: {s}_f rows must be L2-normalised, but {len(bad)} are not (row {bad[0]} has "
                f"norm {norms[bad[0]]:.4g}); {fix}"
            )
        out[f"{s}_f"] = f
    for key in PATH_KEYS:
        if key in feats:
            out[key] = _paths(feats[key], key, where, fix)
            n = len(out[f"{key.split('_')[0]}_f"])
            if len(out[key]) != n:
                raise UserError(f"{where}: {key} has {len(out[key])} paths but there are {n} features; {fix}")
    if "model" in feats:
        out["model"] = _text(feats["model"])
    return out


def save_features(path: str | Path, feats: dict) -> None:
    """Write the features file atomically (see the module docstring for the keys).

    `feats` holds numpy arrays (labels and cameras as (n,) integers) and, optionally, the image paths
    as lists of str and `model` as a str. The contents are checked first, so a bad array fails here,
    in test.py, rather than later in an evaluate script.
    """
    unknown = sorted(set(feats) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"save_features: unknown keys {unknown}; known keys: {sorted(KNOWN_KEYS)}")
    feats = _check_features(feats, f"cannot write {path}", "fix the features before saving them")
    mat = {}
    for key, value in feats.items():
        if key in PATH_KEYS:
            value = np.array(value, dtype=object)  # a cell array keeps each path exactly
        mat[key] = value

    def write(tmp):
        with open(tmp, "wb") as f:
            scipy.io.savemat(f, mat, do_compression=False, oned_as="row")

    atomic_write(path, write)


def load_features(path: str | Path) -> dict:
    """Read and check the features file written by `save_features` (or the classic test.py).

    Returns float32 features (n, d), int64 labels and cameras (n,), lists of str paths and the `model`
    str when present. Any problem (missing or unreadable file, missing keys, mismatched lengths, wrong
    shapes, NaN or inf, rows that are not unit-length) raises UserError with one line naming the file.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such features file; run test.py first (or pass --result_file)")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file raises OSError, ValueError...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path}: cannot read the features file ({reason}); {REDO}") from None
    return _check_features({k: v for k, v in mat.items() if not k.startswith("__")}, str(path), REDO)


def multi_query_features(feats: dict) -> tuple[np.ndarray, int]:
    """Multi-query features (n_q, d): for each query, the mean of the multi-query features of the same
    person id and camera, L2-normalised (the classic evaluate_gpu.py's `--multi`).

    Returns the features and the number of queries without any multi-query image of their id and
    camera; those keep their own feature.
    """
    if "mquery_f" not in feats:
        raise UserError("the features file has no multi-query features (mquery_f); run test.py --multi")
    q_pc = np.stack([feats["query_label"], feats["query_cam"]], axis=1)
    m_pc = np.stack([feats["mquery_label"], feats["mquery_cam"]], axis=1)
    groups, inverse = np.unique(np.concatenate([m_pc, q_pc]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    m_group, q_group = inverse[: len(m_pc)], inverse[len(m_pc) :]
    sums = np.zeros((len(groups), feats["mquery_f"].shape[1]))
    np.add.at(sums, m_group, feats["mquery_f"])
    counts = np.bincount(m_group, minlength=len(groups))[q_group]
    q_f = np.where(counts[:, None] > 0, sums[q_group], feats["query_f"])
    norms = np.linalg.norm(q_f, axis=1, keepdims=True)
    q_f = q_f / np.where(norms > 0, norms, 1)
    return q_f.astype(np.float32), int(np.sum(counts == 0))


# ----------------------------------------------------------------------------------------------------
# The metric.


def query_chunk_rows(n_gallery: int) -> int:
    """Queries per chunk: about 4M distances, so a chunk's working arrays stay near 100 MB."""
    return max(1, (1 << 22) // max(1, n_gallery))


def feature_distance_chunks(q_f: np.ndarray, g_f: np.ndarray) -> Iterator[np.ndarray]:
    """Distances (rows, n_g) of consecutive query chunks: -q.g, the negative cosine similarity.

    On L2-normalised rows this orders the gallery exactly as the Euclidean distance does
    (|q - g|^2 = 2 - 2 q.g), without the rounding that computing 2 - 2 q.g in float32 adds.
    """
    rows = query_chunk_rows(len(g_f))
    for start in range(0, len(q_f), rows):
        dist = q_f[start : start + rows] @ g_f.T
        yield np.negative(dist, out=dist)


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


def _match_ranks(dist: np.ndarray, ignore: np.ndarray, good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank the gallery of each query of a chunk and return where the true matches land.

    dist, ignore, good: (c, n_g). Returns (row, rank) of every true match, sorted by row then rank,
    with `rank` the 1-based rank among the kept (not ignored) images: the result of a stable argsort
    of each row without its ignored images.

    Only the head of each ranking matters: the kept images up to the farthest true match (the order
    past it changes no metric). So only those are sorted, by one sort of uint64 keys
    (row, distance as sortable bits, gallery index); the index breaks ties in gallery order.
    """
    n_rows, n_g = dist.shape
    farthest = np.where(good, dist, -np.inf).max(axis=1)  # (c,): distance of the farthest true match
    in_head = dist <= farthest[:, None]
    in_head &= ~ignore
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


def _chunk_metrics(dist, q_pid, q_cam, g_pid, g_cam, start: int) -> dict:
    """Per-query numbers of the chunk of queries `start`..: dist (c, n_g), q_pid and q_cam (c,)."""
    dist = np.asarray(dist)
    if np.isnan(dist).any():
        raise ValueError(f"the distances of the queries {start}..{start + len(dist) - 1} contain NaN")
    same_pid = q_pid[:, None] == g_pid
    ignore = same_pid & (q_cam[:, None] == g_cam)
    ignore |= g_pid == -1
    good = same_pid & ~ignore
    rows, rank = _match_ranks(dist, ignore, good)

    # Per match: i is its 1-based index among its query's matches, rank its 1-based rank.
    n_good = np.bincount(rows, minlength=len(dist))
    first = np.cumsum(n_good) - n_good  # where each query's matches start in `rows`
    i = np.arange(1, len(rows) + 1) - np.repeat(first, n_good)
    precision = i / rank
    precision_old = np.where(rank == 1, 1.0, (i - 1) / np.maximum(rank - 1, 1))
    has = n_good > 0
    first_rank = np.zeros(len(dist), dtype=np.int64)
    first_rank[has] = rank[first[has]]
    inp = np.zeros(len(dist))
    inp[has] = n_good[has] / rank[first[has] + n_good[has] - 1]
    per_query = np.maximum(n_good, 1)
    return {
        "n_good": n_good,
        "first_rank": first_rank,
        "ap_market": np.bincount(rows, (precision_old + precision) / 2, minlength=len(dist)) / per_query,
        "ap": np.bincount(rows, precision, minlength=len(dist)) / per_query,
        "inp": inp,
    }


def evaluate(
    dist_chunks: Iterable[np.ndarray],
    q_pid: np.ndarray,
    q_cam: np.ndarray,
    g_pid: np.ndarray,
    g_cam: np.ndarray,
    max_rank: int = 50,
) -> dict:
    """CMC, mAP (both rules, see the module docstring) and mINP of a ranking, by the Market-1501 protocol.

    dist_chunks: distances (c_t, n_g), smaller = more similar, of consecutive chunks of the n_q queries
        (e.g. `feature_distance_chunks(q_f, g_f)`), compared as float32; NaN is an error.
    q_pid, q_cam: (n_q,) person ids and cameras of the queries; g_pid, g_cam: (n_g,) of the gallery.

    Returns a dict of floats: `rank1`, `rank5`, `rank10`, `cmc` (Rank@1..Rank@max_rank), `mAP_market1501`,
    `mAP` (non-interpolated), `mINP`, and the counts `n_query`, `n_gallery`, `n_evaluated`, `n_skipped`.

    The chunks are ranked in two worker threads (numpy releases the GIL in its array loops and sorts),
    so ranking overlaps with computing the next chunk; at most four chunks are alive at once.
    """
    q_pid, q_cam, g_pid, g_cam = (np.asarray(a).reshape(-1) for a in (q_pid, q_cam, g_pid, g_cam))
    n_q, n_g = len(q_pid), len(g_pid)
    if n_q == 0 or n_g == 0:
        raise ValueError(f"nothing to evaluate: {n_q} queries, {n_g} gallery images")
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
            pending.append(
                pool.submit(_chunk_metrics, dist, q_pid[start:stop], q_cam[start:stop], g_pid, g_cam, start)
            )
            start = stop
            while len(pending) > workers:
                chunks.append(pending.popleft().result())
        while pending:
            chunks.append(pending.popleft().result())
    if start != n_q:
        raise ValueError(f"the distance chunks cover {start} queries, expected {n_q}")
    per_query = {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
    n_good, first_rank = per_query["n_good"], per_query["first_rank"]

    valid = n_good > 0
    n_valid = int(valid.sum())

    def mean(x):
        return float(np.mean(x[valid])) if n_valid else 0.0

    cmc = [mean(first_rank <= k) for k in range(1, max_rank + 1)]
    return {
        "rank1": cmc[0],
        "rank5": cmc[min(4, max_rank - 1)],
        "rank10": cmc[min(9, max_rank - 1)],
        "mAP_market1501": mean(per_query["ap_market"]),
        "mAP": mean(per_query["ap"]),
        "mINP": mean(per_query["inp"]),
        "cmc": cmc,
        "n_query": n_q,
        "n_gallery": n_g,
        "n_evaluated": n_valid,
        "n_skipped": n_q - n_valid,
    }


# ----------------------------------------------------------------------------------------------------
# What the evaluate scripts share: options, the query set, the result format.


def add_result_file_arg(parser) -> None:
    """--result_file: test.py writes it, the evaluate scripts and demo.py read it."""
    parser.add_argument(
        "--result_file", default="pytorch_result.mat", help="the features file (test.py writes it)"
    )


def add_evaluation_args(parser) -> None:
    """The options of every evaluate script (evaluate.py, evaluate_gpu.py, evaluate_rerank.py)."""
    group = parser.add_argument_group("evaluation")
    add_result_file_arg(group)
    group.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    group.add_argument(
        "--multi",
        action="store_true",
        help="multi-query: each query is the mean of the multi-query features of its id and camera "
        "(needs test.py --multi)",
    )


def load_evaluation_set(args) -> tuple[dict, np.ndarray, dict]:
    """Load `--result_file` and pick the query features for `--multi`.

    Returns (feats, q_f, info): `info` describes the run for the output (file, protocol, sizes).
    """
    feats = load_features(args.result_file)
    info = {"result_file": str(args.result_file), "model": feats.get("model", "")}
    if args.multi:
        q_f, n_alone = multi_query_features(feats)
        info.update(protocol="multi-query", n_mquery=len(feats["mquery_f"]), n_query_without_mquery=n_alone)
    else:
        q_f = feats["query_f"]
        info["protocol"] = "single-query"
    return feats, q_f, info


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


def report(results: dict, json_path: str | None) -> None:
    """Print the result block and, with --json, write `results` (numbers, counts, file) as JSON."""
    print(format_results(results))
    if json_path:

        def write(tmp):
            with open(tmp, "w") as f:
                json.dump(results, f, indent=2)
                f.write("\n")

        atomic_write(json_path, write)
