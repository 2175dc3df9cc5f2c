"""k-reciprocal re-ranking, exact, in bounded memory.

Zhong, Zheng, Cao and Li, "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017
(https://arxiv.org/abs/1701.08398). With N = n_q + n_g probe and gallery features, the published
algorithm (the authors' reference code, re_ranking_feature.py) is:

1. d(i, j): the squared Euclidean distance between all N features, each row divided by its maximum
   (the reference divides each column by its maximum and transposes; the matrix is symmetric).
2. R(i, k): the k-reciprocal neighbours of i: the j among the k + 1 nearest of i (i itself included)
   that have i among their own k + 1 nearest.
3. R*(i): R(i, k1), plus R(j, round(k1 / 2)) for each j in R(i, k1) that has more than 2/3 of its
   R(j, round(k1 / 2)) inside R(i, k1).
4. V(i, j) = exp(-d(i, j)) / sum of exp(-d(i, j')) over j' in R*(i), for j in R*(i); 0 elsewhere.
5. Local query expansion (k2 > 1): V(i) becomes the mean of V(j) over the k2 nearest j of i.
6. Jaccard distance J(i, j) = 1 - m / (2 - m), m = sum_k min(V(i, k), V(j, k)) (the rows of V sum to
   1, so 2 - m is the sum of the maxima).
7. The re-ranked distance (1 - lambda) J(i, j) + lambda d(i, j), for probe i and gallery j.

The reference builds several dense (N, N) matrices (2.1 GB each in float32 at Market-1501 size, N =
23,100). Here only what the algorithm reads is kept: the k1 + 1 nearest neighbours of every point and
each row's maximum, found panel by panel over the upper triangle of the (symmetric) distance matrix;
V as a sparse matrix; and the Jaccard sums only for the probe-gallery pairs that share a non-zero
column. The result is the same up to float rounding (the reference stores V in float16, this module
in float64).

Ties between equal distances go to the smaller index (probes first, then gallery order); the
reference's unstable argsort leaves them unspecified. Person_reID_baseline_pytorch's re_ranking.py
takes cosine similarities and squares (2 - 2 cos) once more; this module follows the authors' code.
"""

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse

from evaluation import sortable_bits

# The (N, N) distances are computed BLOCK rows by PANEL_BLOCKS * BLOCK columns at a time (32 MB): big
# matrix products keep BLAS efficient. Blocks of BLOCK x BLOCK are transposed; 1000, not a power of
# two, keeps the transposes fast (rows 2^k bytes apart compete for the same cache sets).
BLOCK = 1000
PANEL_BLOCKS = 8
# Probe-gallery pairs with a shared non-zero column handled at once in the Jaccard step (~40 B each).
PAIRS = 1 << 22


def re_ranking(
    q_f: np.ndarray, g_f: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """The k-reciprocal re-ranked distance (n_q, n_g), float32, smaller = more similar.

    q_f (n_q, d) and g_f (n_g, d): probe and gallery features. k1: size of the k-reciprocal
    neighbourhood; k2: neighbours averaged by the local query expansion (1 = none, at most k1 + 1);
    lambda_value: weight of the original distance (0 = Jaccard distance only).
    """
    check_params(k1, k2, lambda_value)
    x = np.ascontiguousarray(np.concatenate([q_f, g_f]), dtype=np.float32)
    n_q, n = len(q_f), len(x)
    sq = np.einsum("ij,ij->i", x, x)
    dist = np.empty((n_q, n - n_q), dtype=np.float32)  # holds d(probe, gallery) until the last step
    rank, row_max = _nearest_neighbours(x, sq, min(k1 + 1, n), dist)
    # Distances are divided by each point's largest; a point within rounding of every other one means
    # all the features are one vector (a collapsed model), and the re-ranked distance is 0 / 0.
    if (row_max <= 1e-6 * max(sq.max(), 1e-30)).any():
        raise ValueError(
            "all the features are the same vector, so there is nothing to re-rank (did training collapse?)"
        )
    v = _encode(x, sq, rank, row_max, k1)
    k2 = min(k2, n)  # as the reference's rank[i, :k2] with fewer than k2 points
    if k2 > 1:
        expansion = scipy.sparse.csr_matrix(
            (np.full(n * k2, 1 / k2), rank[:, :k2].ravel(), np.arange(0, n * k2 + 1, k2)), shape=(n, n)
        )
        v = expansion @ v
    _add_jaccard(dist, v, lambda_value)
    return dist


def check_params(k1: int, k2: int, lambda_value: float) -> None:
    """Raise ValueError unless k1 >= 1, 1 <= k2 <= k1 + 1 and 0 <= lambda_value <= 1."""
    if k1 < 1 or not 1 <= k2 <= k1 + 1 or not 0 <= lambda_value <= 1:
        raise ValueError(f"need k1 >= 1, 1 <= k2 <= k1 + 1, 0 <= lambda <= 1; got {k1}, {k2}, {lambda_value}")


def _nearest_neighbours(x, sq, kk: int, dist_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kk nearest of every point and each row's maximum, over the upper triangle of the distances.

    Returns rank (N, kk) int32, nearest first, and row_max (N,). Also writes d(probe, gallery),
    divided by the row maximum, into dist_out (n_q, n_g).

    The distances are computed a panel at a time: BLOCK rows a.. against columns p >= a. A
    panel gives its rows their candidates, and each of its (BLOCK, BLOCK) blocks right of the
    diagonal, transposed, gives the rows of that block theirs; so the lower triangle is never
    computed. Candidates are uint64 keys (distance bits << 32 | index), which order by distance, then
    index. The main thread computes the panels (BLAS) while one worker thread, in order, selects the
    candidates (numpy sorts without holding the GIL).
    """
    n, n_q = len(x), len(dist_out)
    rank = np.empty((n, kk), dtype=np.int32)
    row_max = np.full(n, -np.inf, dtype=np.float32)
    parts = {a: [] for a in range(0, n, BLOCK)}  # row block -> candidate keys [(rows, m), ...]

    def take(d, a, p):
        rows_a, p_stop = slice(a, a + len(d)), p + d.shape[1]
        np.maximum(row_max[rows_a], d.max(axis=1), out=row_max[rows_a])
        parts[a].append(_block_nearest(d, p, kk))
        for b in range(max(p, a + BLOCK), p_stop, BLOCK):
            block = np.ascontiguousarray(d[:, b - p : b - p + BLOCK].T)  # rows b.., columns a..
            rows_b = slice(b, b + len(block))
            np.maximum(row_max[rows_b], block.max(axis=1), out=row_max[rows_b])
            parts[b].append(_block_nearest(block, a, kk))
            if len(parts[b]) >= 16:  # bound the memory: keep the best kk so far
                parts[b] = [_merge(parts[b], kk)]
        # Probe rows x gallery columns go to the output.
        probe_stop, gallery_start = min(rows_a.stop, n_q), max(p, n_q)
        if probe_stop > a and p_stop > gallery_start:
            dist_out[a:probe_stop, gallery_start - n_q : p_stop - n_q] = d[
                : probe_stop - a, gallery_start - p :
            ]
        if p_stop == n:  # the last panel of rows a: their neighbours and maxima are final
            keys = np.sort(_merge(parts.pop(a), kk), axis=1)
            rank[rows_a] = keys & np.uint64(0xFFFFFFFF)
            probes = slice(a, probe_stop)
            with np.errstate(divide="ignore", invalid="ignore"):  # a zero maximum is refused later
                dist_out[probes] /= row_max[probes, None]

    # |x|^2 + |y|^2 - 2 x.y in one matrix product: [x, |x|^2, 1] . [-2 y, 1, |y|^2]
    one = np.ones((n, 1), dtype=np.float32)
    left = np.hstack([x, sq[:, None], one])
    right = np.hstack([-2 * x, one, sq[:, None]])
    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = deque()
        panel = PANEL_BLOCKS * BLOCK
        for a in range(0, n, BLOCK):
            for p in range(a, n, panel):
                d = left[a : a + BLOCK] @ right[p : p + panel].T
                pending.append(worker.submit(take, d, a, p))
                if len(pending) > 2:  # at most 3 panels alive
                    pending.popleft().result()
        for future in pending:
            future.result()
    return rank, row_max


def _block_nearest(d: np.ndarray, col0: int, kk: int) -> np.ndarray:
    """Keys (rows, m) of the m = min(kk, cols) nearest in each row of the block d, whose first column
    is col0. A key is (sortable distance bits << 32) | column index."""
    n_rows, n_cols = d.shape
    m = min(kk, n_cols)
    if m < n_cols:
        kth = np.partition(d, m - 1, axis=1)[:, m - 1]
        flat = np.flatnonzero(d <= kth[:, None])
    else:
        flat = np.arange(d.size)
    key = sortable_bits(d.ravel()[flat]).astype(np.uint64) << np.uint64(32)
    key |= (flat % n_cols + col0).astype(np.uint64)
    if len(flat) == n_rows * m:
        return key.reshape(n_rows, m)
    # Ties at the m-th value leave some rows with more than m entries: keep their m smallest keys.
    rows = flat // n_cols
    order = np.lexsort((key, rows))
    count = np.bincount(rows, minlength=n_rows)
    position = np.arange(len(flat)) - np.repeat(np.cumsum(count) - count, count)
    return key[order][position < m].reshape(n_rows, m)


def _merge(parts: list, kk: int) -> np.ndarray:
    """The kk smallest keys (unsorted) of the candidate parts of the same rows."""
    keys = np.concatenate(parts, axis=1)
    return np.partition(keys, kk - 1, axis=1)[:, :kk] if keys.shape[1] > kk else keys


def _reciprocal(rank: np.ndarray, k: int) -> scipy.sparse.csr_matrix:
    """R(i, k) as a sparse 0/1 matrix (N, N): the j among the k + 1 nearest of i with i among theirs."""
    n = len(rank)
    top = rank[:, : k + 1]
    mutual = (top[top] == np.arange(n)[:, None, None]).any(axis=2)  # (N, k + 1): is i in top(top[i, t])?
    indptr = np.concatenate([[0], np.cumsum(mutual.sum(axis=1))])
    return scipy.sparse.csr_matrix((np.ones(indptr[-1], np.float32), top[mutual], indptr), shape=(n, n))


def _encode(x, sq, rank, row_max, k1: int) -> scipy.sparse.csr_matrix:
    """V (N, N), sparse: the Gaussian-weighted k-reciprocal expansion sets R*(i) (steps 2-4)."""
    n, kk = rank.shape
    kh = min(int(np.around(k1 / 2)), kk - 1)  # np.around rounds half to even, as the reference does
    r = _reciprocal(rank, kk - 1)  # R(i, k1)
    r_half = _reciprocal(rank, kh)  # R(j, k1 / 2)
    # For j in R(i, k1): |R(j, k1 / 2) & R(i, k1)| and |R(j, k1 / 2)|.
    overlap = (r @ r_half.T).multiply(r).tocsr()
    size = np.diff(r_half.indptr)
    # "More than 2/3": 3 * overlap > 2 * size is exact, and agrees with the reference's float test.
    overlap.data = (3 * overlap.data > 2 * size[overlap.indices]).astype(np.float32)
    overlap.eliminate_zeros()
    expansion = (r + overlap @ r_half).tocsr()  # R*(i): R(i, k1) and the R(j, k1 / 2) of those j
    expansion.sort_indices()
    rows = np.repeat(np.arange(n), np.diff(expansion.indptr))
    cols = expansion.indices

    # Weights exp(-d(i, j)), d recomputed for these pairs only, normalised to sum 1 in each row.
    d = np.empty(len(rows), dtype=np.float32)
    step = 1 << 14  # pairs per gather: 2 x 32 MB of 512-d features
    for s in range(0, len(rows), step):
        i, j = rows[s : s + step], cols[s : s + step]
        d[s : s + len(i)] = sq[i] + sq[j] - 2 * np.einsum("ij,ij->i", x[i], x[j])
    weight = np.exp(-(d / row_max[rows]).astype(np.float64))
    weight /= np.bincount(rows, weight, minlength=n)[rows]
    return scipy.sparse.csr_matrix((weight, cols, expansion.indptr), shape=(n, n))


def _add_jaccard(dist: np.ndarray, v: scipy.sparse.csr_matrix, lambda_value: float) -> None:
    """dist (n_q, n_g) <- (1 - lambda) J + lambda dist, with J the Jaccard distance of the rows of v.

    sum_k min(V(i, k), V(j, k)) is non-zero only where the probe row i and the gallery row j share a
    non-zero column k: each probe entry (i, k) is paired with the gallery entries of column k, and
    the minima are summed per (i, j) with bincount, for a chunk of probes at a time.
    """
    n_q, n_g = dist.shape
    probe = v[:n_q]
    gallery = v[n_q:].tocsc()  # column k -> the gallery rows j with V(j, k) > 0
    column_size = np.diff(gallery.indptr)
    cum_pairs = np.concatenate([[0], np.cumsum(column_size[probe.indices])])[probe.indptr]  # (n_q + 1,)
    max_rows = max(1, PAIRS // n_g)
    a = 0
    while a < n_q:
        b = int(np.searchsorted(cum_pairs, cum_pairs[a] + PAIRS, side="right")) - 1
        b = min(max(b, a + 1), a + max_rows, n_q)
        entries = slice(probe.indptr[a], probe.indptr[b])
        entry_row = np.repeat(np.arange(b - a), np.diff(probe.indptr[a : b + 1]))
        k, value = probe.indices[entries], probe.data[entries]
        size = column_size[k]
        entry = np.repeat(np.arange(len(k)), size)  # the probe entry of each pair
        first = np.repeat(gallery.indptr[k] - (np.cumsum(size) - size), size)
        position = first + np.arange(len(entry))  # the gallery entry of each pair
        minimum = np.minimum(value[entry], gallery.data[position])
        target = entry_row[entry] * n_g + gallery.indices[position]
        m = np.bincount(target, minimum, minlength=(b - a) * n_g).reshape(b - a, n_g)
        jaccard = 1 - m / (2 - m)
        dist[a:b] = (1 - lambda_value) * jaccard + lambda_value * dist[a:b]
        a = b
