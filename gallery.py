"""A gallery index and searching it: the features of any folder of images, exact top-k search, and a
"no match" threshold calibrated on the statistic the search answers with.

**The index** is a folder, written by index.py and read by search.py and calibrate.py:

    index.json             what the index holds, written last and atomically (the commit point):
                           the provenance of features.py (model, model_dir, model_epoch,
                           checkpoint_sha256, extraction), the feature size, the naming and table of
                           ids when the images have labels, its parts and the calibrated threshold
    features-NNNNNN.npy    float32 (n, d), unit rows: the features of one part
    paths-NNNNNN.txt       the n absolute image paths of that part, one per line, UTF-8
    labels-NNNNNN.npy      int64 (n, 2): person id and camera of each image, -1 when unknown
    faiss.index            only with a faiss search method: the faiss index of every feature

Adding images writes a new part, then index.json, so an index is never half-written: a run that
stops early leaves part files that index.json does not list, which the next run that adds removes.
Features are opened with np.load(mmap_mode="r"): an index of a million 512-d features (2 GB) takes
no memory until searched, and a search reads it chunk by chunk.

**Search** (`search`): the exact k nearest gallery images of each query by metrics.py's ranking
distance -q.g (ties in gallery order), chunk by chunk: each chunk of the gallery is reduced to its k
best (metrics.top_k), then merged with the best so far, so memory is bounded by the chunk size
whatever the size of the index. Distances are reported as the Euclidean distance of unit features,
sqrt(2 - 2 q.g) (metrics.euclidean), from 0 to 2.

**Search methods** (index.py --search; index.json's `search` remembers which): `exact` is the search
above, over the memory-mapped parts. With faiss (`pip install faiss-cpu`), `faiss_exact` is a flat
inner-product index (exact too, the features held in memory) and `faiss_ivf` an approximate one:
the features are clustered into `nlist` lists (k-means) and a query reads only the `nprobe` lists
nearest to it. Its recall@10 against the exact search is measured on up to RECALL_QUERIES of the
index's own features as queries, each left out of its own results; unless index.py --nprobe fixes it,
nprobe is the fewest lists (1, 2, 4, ...) that reach TARGET_RECALL. index.py prints both and stores
them with the index. A faiss index is rebuilt whenever images are added.

**The threshold.** Search answers "match" when the best distance is at or below the threshold, and
"no match" above it (`is_match`). So the threshold must be chosen on that statistic, the *best*
distance of a query to a whole gallery, not on the distances of single pairs: the nearest of
hundreds of other people is much nearer than a typical other person. On a labelled test set (a
features file of test.py), for each query (`best_distances`):

    true-match distance    the distance of its nearest true match (the rule of metrics.protocol_masks)
    impostor distance      the distance of its nearest image of another person: its best distance
                           when its own identity is removed from the gallery, as for someone absent

An absent person is answered "match" when their best (impostor) distance is within the threshold t,
so the false-match rate at t is the share of queries whose impostor distance is <= t. For a target
rate r (default 1%), `threshold_at` takes t midway between the k-th and the (k+1)-th smallest
impostor distance, k = floor(r * n_queries): it accepts exactly k of them. The true-match rate at t
is the share of the queries with a true match whose first answer is a true match within t (open-set
identification's detection-and-identification rate); `answered` also counts a wrong first answer.
The rates hold for galleries of about the size calibrated on: in a larger gallery an absent person
meets more look-alikes, so more are answered "match".
"""

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from features import PROVENANCE_KEYS, check_same_model, same_extraction
from metrics import euclidean, feature_distance_chunks, protocol_masks, top_k
from utils import UserError, atomic_write, replace_folder

INDEX_FILE = "index.json"
FORMAT = "reid gallery index, version 1"
UNKNOWN = -1  # the label of an image whose id or camera the naming does not give
QUERY_BLOCK = 4096  # queries searched at once; the gallery is read once per block
BLOCK_DISTANCES = 1 << 22  # distances computed at once (16 MB of float32)
FALSE_MATCH_RATE = 0.01  # the default target of calibrate.py and demo.py --plot_distances
ROC_RATES = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # the rows of the printed table
METHODS = ("exact", "faiss_exact", "faiss_ivf")  # index.py --search
FAISS_FILE = "faiss.index"
TARGET_RECALL = 0.95  # faiss_ivf: reads the fewest lists that reach this recall@10 (index.py --target_recall)
RECALL_QUERIES = 1000  # faiss_ivf: index features searched to measure its recall@10

# ----------------------------------------------------------------------------------------------------
# The index on disk.


class GalleryIndex(NamedTuple):
    folder: Path
    meta: dict  # index.json
    parts: list[np.ndarray]  # memory-mapped float32 features, one (n_i, d) array per part
    labels: np.ndarray  # (n, 2) int64: person id, camera; UNKNOWN when the naming does not give them

    @property
    def size(self) -> int:
        return sum(len(part) for part in self.parts)

    def paths(self) -> list[str]:
        """Every image path, in index order."""
        return [line for part in self.meta["parts"] for line in _read_paths(self.folder, part["name"])]

    def features(self) -> np.ndarray:
        """All the features (n, d) in memory: for small indexes and tests; search reads the parts."""
        return np.concatenate([np.asarray(part) for part in self.parts])


def part_files(folder: Path, name: str) -> tuple[Path, Path, Path]:
    return folder / f"features-{name}.npy", folder / f"paths-{name}.txt", folder / f"labels-{name}.npy"


def _read_paths(folder: Path, name: str) -> list[str]:
    return part_files(folder, name)[1].read_text(encoding="utf-8").split("\n")[:-1]


def open_index(folder: str | Path) -> GalleryIndex:
    """Open the index `folder`: index.json read and checked, features memory-mapped, labels read."""
    folder = Path(folder)
    redo = "run index.py to write it again"
    if not (folder / INDEX_FILE).is_file():
        raise UserError(f"{folder}: no gallery index here (no {INDEX_FILE}); write one with index.py")
    try:
        meta = json.loads((folder / INDEX_FILE).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        parts, labels = [], []
        for part in meta["parts"]:
            features_file, _, labels_file = part_files(folder, part["name"])
            features = np.load(features_file, mmap_mode="r")
            part_labels = np.load(labels_file)
            if features.shape != (part["rows"], meta["dim"]) or features.dtype != np.float32:
                raise ValueError(f"{features_file.name} holds {features.dtype} {features.shape}")
            if part_labels.shape != (part["rows"], 2):
                raise ValueError(f"{labels_file.name} holds {part_labels.shape}")
            parts.append(features)
            labels.append(part_labels)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{folder}: cannot read the gallery index ({err}); {redo}") from None
    all_labels = np.concatenate(labels) if labels else np.zeros((0, 2), dtype=np.int64)
    return GalleryIndex(folder, meta, parts, all_labels.astype(np.int64))


def new_meta(
    provenance: dict, dim: int, naming: str | None, ids: dict | None, cameras: bool, method: str = "exact"
) -> dict:
    """The index.json of a new, empty index, searched with `method` (its faiss index still to build)."""
    meta = {"format": FORMAT, **{key: provenance[key] for key in PROVENANCE_KEYS}, "dim": dim}
    meta.update({"naming": naming, "ids": ids, "cameras": cameras, "parts": [], "threshold": None})
    meta["search"] = {"method": method} if method == "exact" else {"method": method, "rows": 0}
    return meta


def write_meta(folder: Path, meta: dict) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")

    atomic_write(folder / INDEX_FILE, write)


def add_part(folder: Path, meta: dict, features: np.ndarray, paths: list[str], labels: np.ndarray) -> dict:
    """Write one more part to the index `folder` whose index.json is `meta`, then index.json: returns
    the new meta. Part files of an earlier run that stopped early (not in `meta`) are removed first.

    features: (n, d) unit rows; paths: n absolute paths; labels: (n, 2) int64.
    """
    if any("\n" in path or "\r" in path for path in paths):
        bad = next(path for path in paths if "\n" in path or "\r" in path)
        raise UserError(f"{bad!r}: a file name with a line break cannot be indexed; rename the file")
    folder.mkdir(parents=True, exist_ok=True)
    listed = {file.name for part in meta["parts"] for file in part_files(folder, part["name"])}
    for file in folder.iterdir():
        if (
            file.name not in listed
            and file.name != INDEX_FILE
            and file.name.startswith(("features-", "paths-", "labels-"))
        ):
            file.unlink()
    name = f"{len(meta['parts']):06d}"
    features_file, paths_file, labels_file = part_files(folder, name)
    np.save(features_file, np.ascontiguousarray(features, dtype=np.float32))
    paths_file.write_text("".join(f"{path}\n" for path in paths), encoding="utf-8")
    np.save(labels_file, np.asarray(labels, dtype=np.int64).reshape(-1, 2))
    for file in (features_file, paths_file, labels_file):
        with open(file, "rb") as f:
            os.fsync(f.fileno())  # on disk before index.json names them
    meta = {**meta, "parts": [*meta["parts"], {"name": name, "rows": len(paths)}]}
    write_meta(folder, meta)
    return meta


def create_index(
    folder: Path, meta: dict, features: np.ndarray, paths: list[str], labels: np.ndarray
) -> dict:
    """A new index `folder` (absent or empty) holding one part: built in a temporary folder next to it,
    then renamed, so it appears whole or not at all. Returns its meta."""
    written = {}

    def build(tmp: Path) -> None:
        written["meta"] = add_part(tmp, meta, features, paths, labels)

    replace_folder(folder, build)
    return written["meta"]


def check_comparable(feats: dict, reference: dict, where: str) -> str:
    """Refuse features that cannot be compared: `feats` (the contents or provenance of `where`: an
    index, a features file) must record the checkpoint of `reference` (the provenance of the features
    they would be compared with; features.check_same_model) and the same extraction (up to the
    runtime: features.same_extraction). Returns
    check_same_model's warning for `feats` that record no checkpoint, else ""."""
    warning = check_same_model(feats, reference, reference["model"], where)
    if "extraction" in feats and not same_extraction(feats["extraction"], reference["extraction"]):
        raise UserError(
            f"{where} holds features extracted as {feats['extraction']!r}, but {reference['model']}'s here "
            f"are {reference['extraction']!r}: use the same test-time options (--ms, --bf16/--fp16)"
        )
    return warning


# ----------------------------------------------------------------------------------------------------
# Search.


def add_answer_args(parser, threshold_default: str) -> None:
    """--top_k and --threshold: how many ranked gallery images, and the "no match" threshold (demo.py,
    search.py). `threshold_default` says what happens without --threshold."""
    from utils import at_least_one

    parser.add_argument("--top_k", type=at_least_one, default=10, help="ranked gallery images per query")
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="D",
        help=f"answer 'no match' when the best distance is above D; {threshold_default}",
    )


def search(
    q_f: np.ndarray, parts: list[np.ndarray], k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest gallery images of each query: indices (m, k) into the concatenated `parts` and
    their Euclidean distances (m, k), nearest first, ties in gallery order.

    q_f: (m, d) unit rows; parts: (n_i, d) arrays, read a chunk at a time (memory-mapped is fine).
    exclude: (m,) a gallery index to leave out of each query's results (the query's own image), or -1;
    k must leave room for it (k < the gallery size) when any is given.
    """
    n_g = sum(len(part) for part in parts)
    excluding = exclude is not None and bool((np.asarray(exclude) >= 0).any())
    want = k + excluding
    if not 1 <= want <= n_g:
        raise ValueError(f"top {k} of {n_g} gallery images{' with one left out' if excluding else ''}")
    found = []
    for start in range(0, len(q_f), QUERY_BLOCK):
        q = q_f[start : start + QUERY_BLOCK]
        rows = max(1, BLOCK_DISTANCES // len(q))
        best_i, best_d = np.zeros((len(q), 0), dtype=np.int64), np.zeros((len(q), 0), dtype=np.float32)
        offset = 0
        for part in parts:
            for g_start in range(0, len(part), rows):
                chunk = next(feature_distance_chunks(q, np.asarray(part[g_start : g_start + rows])))
                chunk_i, chunk_d = top_k(chunk, min(want, chunk.shape[1]))
                # The best so far come from earlier gallery images: first, so ties keep gallery order.
                cand_i = np.concatenate([best_i, chunk_i + offset + g_start], axis=1)
                cand_d = np.concatenate([best_d, chunk_d], axis=1)
                pos, best_d = top_k(cand_d, min(want, cand_d.shape[1]))
                best_i = np.take_along_axis(cand_i, pos, axis=1)
            offset += len(part)
        found.append((best_i, best_d))
    best_i, best_d = (np.concatenate(arrays) for arrays in zip(*found))
    if excluding:
        best_i, best_d = leave_out(best_i, best_d, exclude, k)
    return best_i, euclidean(best_d)


def leave_out(found: np.ndarray, dist: np.ndarray, exclude: np.ndarray, k: int):
    """The first k of each row's results (m, k + 1) that are not its `exclude` image."""
    keep = np.argsort(found == np.asarray(exclude)[:, None], axis=1, kind="stable")[:, :k]
    return np.take_along_axis(found, keep, axis=1), np.take_along_axis(dist, keep, axis=1)


def search_index(index: GalleryIndex, q_f: np.ndarray, k: int, exclude: np.ndarray | None = None):
    """`search` the index with its own method (index.json's `search`): exact over the parts, or its
    faiss index. Returns indices and Euclidean distances (m, k), as `search`."""
    method = index.meta.get("search", {"method": "exact"})
    if method["method"] == "exact":
        return search(q_f, index.parts, k, exclude)
    if method["rows"] != index.size:
        raise UserError(
            f"{index.folder}: its {FAISS_FILE} holds {method['rows']} of the {index.size} images (a run "
            f"of index.py stopped early); run index.py --add on it again to rebuild it"
        )
    faiss_index = faiss_of(index)
    excluding = exclude is not None and bool((np.asarray(exclude) >= 0).any())
    want = k + excluding
    if not 1 <= want <= index.size:
        raise ValueError(f"top {k} of {index.size} gallery images{' with one left out' if excluding else ''}")
    sims, found = faiss_index.search(np.ascontiguousarray(q_f, dtype=np.float32), want)
    missing = (found < 0).any(axis=1)  # faiss_ivf: fewer than `want` images in the lists read
    if missing.any():
        exact_i, exact_d = search(q_f[missing], index.parts, want)
        found[missing], sims[missing] = exact_i, 1 - exact_d**2 / 2
    dist = -sims
    if excluding:
        found, dist = leave_out(found, dist, exclude, k)
    return found.astype(np.int64), euclidean(dist)


def import_faiss():
    """faiss, or a one-line error saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise UserError("the faiss search methods need faiss: pip install faiss-cpu") from None
    return faiss


_faiss_read = {}  # faiss.index files read, by (path, size, modification time): read once per process


def faiss_of(index: GalleryIndex):
    """The faiss index of `index` (a faiss method), read into memory the first time it is needed."""
    faiss = import_faiss()
    path = index.folder / FAISS_FILE
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _faiss_read:
            _faiss_read.clear()  # one at a time: they can be large
            _faiss_read[key] = faiss.read_index(str(path))
    except (OSError, RuntimeError) as err:
        raise UserError(
            f"{path}: cannot read it ({err}); run index.py --add on the index to rebuild it"
        ) from None
    faiss_index = _faiss_read[key]
    if index.meta["search"]["method"] == "faiss_ivf":
        faiss_index.nprobe = index.meta["search"]["nprobe"]
    return faiss_index


def ivf_lists(n: int) -> int:
    """faiss_ivf's number of lists for n features: about 4 sqrt(n), with at least 39 features per
    list for k-means (faiss's minimum), at least 1."""
    return max(1, min(int(4 * np.sqrt(n)), n // 39))


def build_faiss(
    index: GalleryIndex,
    method: str,
    nprobe: int | None = None,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> dict:
    """Write the faiss index of `method` for every feature of `index` (atomically) and return what
    index.json's `search` records: the method, the rows it holds, the build time and, for faiss_ivf,
    nlist, nprobe and its recall@10 against the exact search (RecallCheck). Without `nprobe`, the
    fewest lists (1, 2, 4, ... nlist) whose recall@10 reaches `target_recall`."""
    import time

    faiss = import_faiss()
    start = time.perf_counter()
    d, n = index.meta["dim"], index.size
    rng = np.random.default_rng(seed)
    if method == "faiss_exact":
        faiss_index = faiss.IndexFlatIP(d)
        record = {"method": method}
    else:
        nlist = ivf_lists(n)
        faiss_index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))  # k-means' training set
        faiss_index.train(np.ascontiguousarray(take_rows(index.parts, sample)))
        record = {"method": method, "nlist": nlist}
    for part in index.parts:
        for start_row in range(0, len(part), 1 << 16):
            faiss_index.add(np.ascontiguousarray(part[start_row : start_row + (1 << 16)]))
    record.update(rows=n, build_seconds=round(time.perf_counter() - start, 3))
    if method == "faiss_ivf":
        check = RecallCheck(index, rng)
        if nprobe is not None:
            record["nprobe"] = min(nprobe, nlist)
            record["recall_at_10"] = check(faiss_index, record["nprobe"])
        else:  # the fewest lists that reach the target; all of them reach 1.0 (an exhaustive search)
            record["target_recall"] = target_recall
            record["nprobe"], record["recall_at_10"] = 1, check(faiss_index, 1)
            while record["recall_at_10"] < target_recall and record["nprobe"] < nlist:
                record["nprobe"] = min(2 * record["nprobe"], nlist)
                record["recall_at_10"] = check(faiss_index, record["nprobe"])
        faiss_index.nprobe = record["nprobe"]
    atomic_write(index.folder / FAISS_FILE, lambda tmp: faiss.write_index(faiss_index, str(tmp)))
    return record


def take_rows(parts: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The features of the sorted index positions `rows`, gathered from the parts."""
    bounds = np.cumsum([0] + [len(part) for part in parts])
    return np.concatenate(
        [
            np.asarray(part[rows[(rows >= lo) & (rows < hi)] - lo])
            for part, lo, hi in zip(parts, bounds, bounds[1:])
        ]
    )


class RecallCheck:
    """Recall@k of an approximate faiss index against the exact search: the share of each query's
    exact top k that it also returns, averaged over up to RECALL_QUERIES of the index's features,
    each left out of its own results. The exact answers are computed once."""

    def __init__(self, index: GalleryIndex, rng: np.random.Generator, k: int = 10):
        self.k = min(k, index.size - 1)
        self.rows = np.sort(rng.choice(index.size, size=min(index.size, RECALL_QUERIES), replace=False))
        self.q_f = np.ascontiguousarray(take_rows(index.parts, self.rows))
        self.exact = search(self.q_f, index.parts, self.k, self.rows)[0] if self.k >= 1 else None

    def __call__(self, faiss_index, nprobe: int) -> float:
        if self.k < 1:
            return 1.0
        faiss_index.nprobe = nprobe
        _, found = faiss_index.search(self.q_f, self.k + 1)
        found = [row[row != own][: self.k] for row, own in zip(found, self.rows)]
        return float(np.mean([len(set(a) & set(b)) / self.k for a, b in zip(self.exact, found)]))


def is_match(best_dist: float, threshold: float) -> bool:
    """The answer rule: a match when the best distance is within the threshold (<=)."""
    return bool(best_dist <= threshold)


# ----------------------------------------------------------------------------------------------------
# The threshold.


def best_distances(q_f, q_pid, q_cam, g_f, g_pid, g_cam) -> dict:
    """For each query (n_q,) of a labelled test set (module docstring): `true`, the Euclidean distance
    of its nearest true match (inf without one); `impostor`, of its nearest image of another person
    (inf without one); `first_true`, whether its nearest kept image (ties in gallery order) is a true
    match. Junk (metrics.protocol_masks) is left out of all three. q_f (n_q, d), g_f (n_g, d)."""
    out = {"true": [], "impostor": [], "first_true": []}
    start = 0
    for neg_cos in feature_distance_chunks(q_f, g_f):
        stop = start + len(neg_cos)
        good, junk = protocol_masks(q_pid[start:stop], q_cam[start:stop], g_pid, g_cam)
        start = stop
        first = np.where(junk, np.inf, neg_cos).argmin(axis=1)  # the first index among equal minima
        out["first_true"].append(good[np.arange(len(good)), first])
        out["true"].append(euclidean(np.where(good, neg_cos, np.inf).min(axis=1)))
        out["impostor"].append(euclidean(np.where(good | junk, np.inf, neg_cos).min(axis=1)))
    return {key: np.concatenate(values) for key, values in out.items()}


def features_best_distances(feats: dict) -> dict:
    """best_distances of the queries and gallery of a features file's contents."""
    return best_distances(feats["query_f"], feats["query_label"], feats["query_cam"],
                          feats["gallery_f"], feats["gallery_label"], feats["gallery_cam"])  # fmt: skip


def threshold_at(impostor: np.ndarray, rate: float) -> float:
    """The threshold whose false-match rate on these impostor distances (n,) is `rate` or just below:
    midway between the k-th and the (k+1)-th smallest, k = floor(rate * n), so exactly k are within it
    (fewer when distances tie). k = 0: just below the smallest. rate >= 1: the largest."""
    dist = np.sort(impostor[np.isfinite(impostor)])
    if len(dist) == 0:
        raise ValueError("no impostor distances: the gallery holds nobody but the queries' own people")
    k = int(np.floor(rate * len(dist) + 1e-9))
    if k >= len(dist):
        return float(dist[-1])
    below = dist[dist < dist[k]]
    if len(below) == 0:
        return float(np.nextafter(dist[k], -np.inf))
    return float((below[-1] + dist[k]) / 2)


def rates_at(best: dict, threshold):
    """The rates of `best` (best_distances) at a threshold (a number, or an array of them):
    `false_match`, the share of all queries whose impostor distance is within it; `true_match`, the
    share of the queries with a true match whose first answer is a true match within it; `answered`,
    the share of those answered "match" at all."""
    has_true = np.isfinite(best["true"])
    n_true = max(1, int(has_true.sum()))

    def share(values, n):  # of `values` within the threshold, over n
        return np.searchsorted(np.sort(values), threshold, side="right") / n

    return {
        "false_match": share(best["impostor"], len(best["impostor"])),
        "true_match": share(best["true"][best["first_true"]], n_true),
        "answered": share(np.minimum(best["true"], best["impostor"])[has_true], n_true),
    }


def calibrate(best: dict, rate: float = FALSE_MATCH_RATE) -> dict:
    """The threshold for a target false-match rate and what it gives on `best` (best_distances)."""
    threshold = threshold_at(best["impostor"], rate)
    n = len(best["impostor"])
    return {
        "threshold": threshold,
        "target_false_match_rate": rate,
        **{f"{key}_rate": float(value) for key, value in rates_at(best, threshold).items()},
        "n_queries": n,
        "n_with_true_match": int(np.isfinite(best["true"]).sum()),
        "too_few_queries": bool(rate * n < 1),
    }


def describe_calibration(calibration: dict) -> str:
    """One line: the threshold and its rates (a note when too few queries measure the target)."""
    c = calibration
    line = (
        f"threshold {c['threshold']:.4f} for a false-match rate of {c['target_false_match_rate']:.1%}: "
        f"{c['false_match_rate']:.1%} of the {c['n_queries']} queries answered 'match' when their own "
        f"identity is removed from the gallery, and {c['true_match_rate']:.1%} of the "
        f"{c['n_with_true_match']} with a true match answered with a true match first"
    )
    if c["too_few_queries"]:
        line += (
            f" (note: {c['n_queries']} queries are too few to measure a rate of "
            f"{c['target_false_match_rate']:.1%}: the threshold is just below the nearest impostor)"
        )
    return line


def roc_table(best: dict, rates=ROC_RATES) -> str:
    """The printed table: for each target false-match rate, its threshold and the measured rates."""
    rows = [f"{'target':>8} {'threshold':>10} {'false match':>12} {'true match':>11} {'answered':>9}"]
    for rate in rates:
        threshold = threshold_at(best["impostor"], rate)
        got = rates_at(best, threshold)
        rows.append(
            f"{rate:>8.1%} {threshold:>10.4f} {got['false_match']:>12.2%} {got['true_match']:>11.2%} "
            f"{got['answered']:>9.2%}"
        )
    return "\n".join(rows)


def halve(feats: dict, rng: np.random.Generator) -> tuple[dict, dict]:
    """A random halving of a labelled test set (query and gallery keys of a features file) by identity:
    two sets with the queries and gallery images of half the query identities each; distractors, junk
    and gallery identities without a query are shared out at random, so both galleries are about as big."""
    ids = np.unique(feats["query_label"])
    a_ids = rng.permutation(ids)[: len(ids) // 2]
    q_in_a = np.isin(feats["query_label"], a_ids)
    g_label = feats["gallery_label"]
    g_in_a = np.isin(g_label, a_ids) | (~np.isin(g_label, ids) & (rng.random(len(g_label)) < 0.5))

    def part(q, g):
        out = {f"query_{k}": feats[f"query_{k}"][q] for k in ("f", "label", "cam")}
        out.update({f"gallery_{k}": feats[f"gallery_{k}"][g] for k in ("f", "label", "cam")})
        return out

    return part(q_in_a, g_in_a), part(~q_in_a, ~g_in_a)


def held_out_check(feats: dict, rate: float, splits: int, seed: int = 0):
    """Does the threshold hold on people it was not calibrated on? For each of `splits` random halvings
    (halve) of the test set `feats`: calibrate on half A, measure on half B. Yields (a, b, calibration
    on A, rates_at of B at that threshold, best_distances of B). Needs two query identities or more."""
    rng = np.random.default_rng(seed)
    for _ in range(splits):
        a, b = halve(feats, rng)
        calibration = calibrate(features_best_distances(a), rate)
        best_b = features_best_distances(b)
        held_out = {key: float(value) for key, value in rates_at(best_b, calibration["threshold"]).items()}
        yield a, b, calibration, held_out, best_b


def describe_held_out(rates: list[dict], rate: float, n_ids: int) -> str:
    """The lines calibrate.py prints about held_out_check's results (`rates`: the held-out rates)."""
    false_match = np.array([r["false_match"] for r in rates])
    true_match = np.array([r["true_match"] for r in rates])
    line = (
        f"held-out check, {len(rates)} random halvings of the {n_ids} test identities (calibrated on one half, "
        f"measured on the other): false-match rate mean {false_match.mean():.1%}, from {false_match.min():.1%} "
        f"to {false_match.max():.1%}; true-match rate mean {true_match.mean():.1%}"
    )
    if np.abs(false_match - rate).max() > 0.02:
        line += (
            f"\nnote: on people it was not calibrated on, the false-match rate strays more than 2 points from "
            f"{rate:.1%}: the test set has too few identities to pin it; calibrate on more people"
        )
    return line
