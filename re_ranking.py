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

Most gallery images share no neighbour with a probe, so their Jaccard distance is exactly 1: with
lambda > 0 the original distance orders them; with lambda = 0 they all tie (evaluate_rerank.py
refuses to rank by that).

The reference builds several dense (N, N) matrices (2.1 GB each in float32 at Market-1501 size, N =
23,100). Here only what the algorithm reads is kept: the k1 + 1 nearest neighbours of every point and
each row's maximum, found by torch (`topk`) a chunk of rows of the distance matrix at a time, on the
GPU when there is one; V as a sparse matrix; and the Jaccard sums only for the probe-gallery pairs
that share a non-zero column. The result is the same up to float rounding (the reference stores V in
float16, this module in float64).

Ties between equal distances go to the smaller index (probes first, then gallery order); the
reference's unstable argsort leaves them unspecified. Person_reID_baseline_pytorch's re_ranking.py
takes cosine similarities and squares (2 - 2 cos) once more; this module follows the authors' code.
"""

import numpy as np
import scipy.sparse
import torch

# Rows of the distance matrix computed at once in the neighbour search: ROWS x N float32 (139 MB at
# Market-1501 size, N = 23,100). Fewer rows make the per-column selection slower (shorter columns).
ROWS = 1500
# Probe-gallery pairs with a shared non-zero column handled at once in the Jaccard step (~40 B each).
PAIRS = 1 << 22


def re_ranking(
    q_f: np.ndarray, g_f: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, device=None
) -> np.ndarray:
    """The k-reciprocal re-ranked distance (n_q, n_g), float32, smaller = more similar.

    q_f (n_q, d) and g_f (n_g, d): probe and gallery features. k1: size of the k-reciprocal
    neighbourhood; k2: neighbours averaged by the local query expansion (1 = none, at most k1 + 1);
    lambda_value: weight of the original distance (0 = Jaccard distance only). device: where torch
    searches the neighbours (default: the GPU when there is one, else the CPU).
    """
    check_params(k1, k2, lambda_value)
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = np.ascontiguousarray(np.concatenate([q_f, g_f]), dtype=np.float32)
    n_q, n = len(q_f), len(x)
    sq = np.einsum("ij,ij->i", x, x)
    rank, row_max, dist = _nearest_neighbours(x, sq, min(k1 + 1, n), n_q, device)
    # Distances are divided by each point's largest; a point within rounding of every other one means
    # all the features are one vector (a collapsed model), and the re-ranked distance is 0 / 0.
    if (row_max <= 1e-6 * max(sq.max(), 1e-30)).any():
        raise ValueError(
            "all the features are the same vector, so there is nothing to re-rank (did training collapse?)"
        )
    dist /= row_max[:n_q, None]
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


@torch.inference_mode()
def _nearest_neighbours(x, sq, kk: int, n_q: int, device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kk nearest of every point, each row's maximum, and the probe-gallery distances.

    Returns rank (N, kk) int64, nearest first, ties to the smaller index; row_max (N,) float32; and
    d(probe, gallery) (n_q, n_g) float32, not yet divided by the row maxima.

    The distance matrix is symmetric, so only its upper part is computed: for each block of rows
    a..a+B, the distances to the columns from a on. Each such chunk gives its rows their candidates
    (the kk nearest among those columns) and, read down its columns, gives each later row b >= a+B
    its candidates among the rows a..a+B; a row's running kk nearest are merged with every new set.
    """
    n = len(x)
    # |x|^2 + |y|^2 - 2 x.y in one matrix product: [x, |x|^2, 1] . [-2 y, 1, |y|^2]
    one = np.ones((n, 1), dtype=np.float32)
    left = torch.from_numpy(np.hstack([x, sq[:, None], one])).to(device)
    right = torch.from_numpy(np.hstack([-2 * x, one, sq[:, None]])).to(device)
    best_dist = torch.full((n, kk), torch.inf, device=device)  # each row's kk nearest so far
    best_index = torch.full((n, kk), n, device=device)  # n: no candidate yet (sorts last on ties)
    row_max = torch.full((n,), -torch.inf, device=device)
    dist = np.empty((n_q, n - n_q), dtype=np.float32)
    for a in range(0, n, ROWS):
        b = min(a + ROWS, n)
        d = left[a:b] @ right[a:].T  # (b - a, n - a): rows a..b, columns a..n
        row_max[a:b] = torch.maximum(row_max[a:b], d.max(dim=1).values)
        best_dist[a:b], best_index[a:b] = _merge(best_dist[a:b], best_index[a:b], *_smallest(d, kk), kk, a)
        if b < n:  # the columns right of the block: rows b..n, their distances to the rows a..b
            below = d[:, b - a :].T
            row_max[b:] = torch.maximum(row_max[b:], below.max(dim=1).values)
            best_dist[b:], best_index[b:] = _merge(
                best_dist[b:], best_index[b:], *_smallest(below, kk), kk, a
            )
        if a < n_q:  # probes come first, so all their gallery columns (n_q..n) are in the chunk
            dist[a : min(b, n_q)] = d[: n_q - a, n_q - a :].cpu().numpy()
    return best_index.cpu().numpy(), row_max.cpu().numpy(), dist


def _smallest(d: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest entries of each row of d (rows, m) and their column indices, as a stable sort of
    the row orders them (by value, ties by index); fewer when m < k."""
    k = min(k, d.shape[1])
    if k == d.shape[1]:
        return _order(d, torch.arange(k, device=d.device).expand_as(d), k)
    values, index = torch.topk(d, k + 1, dim=1, largest=False)
    values, index = _order(values, index, k + 1)
    # Where the (k+1)-th smallest equals the k-th, a tie crosses the cut and topk may have kept a
    # larger index than a row's stable sort would: sort those rows whole.
    crowded = (values[:, k] == values[:, k - 1]).nonzero().flatten()
    if len(crowded):
        whole = d[crowded].sort(dim=1, stable=True)
        values[crowded], index[crowded] = whole.values[:, : k + 1], whole.indices[:, : k + 1]
    return values[:, :k], index[:, :k]


def _order(values: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k first of each row of (values, index) pairs ordered by value, ties by index."""
    index, order = index.sort(dim=1)
    values, order = values.gather(1, order).sort(dim=1, stable=True)
    return values[:, :k], index.gather(1, order)[:, :k]


def _merge(dist_a, index_a, dist_b, index_b, k: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest of two candidate sets of the same rows; index_b counts columns from `offset`."""
    return _order(torch.cat([dist_a, dist_b], dim=1), torch.cat([index_a, index_b + offset], dim=1), k)


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
