"""Finding the k movies with the largest inner product with a query: one
interface, two backends (as TFRS's ``layers/factorized_top_k.py``: ``TopK``
with ``BruteForce`` and ``ScaNN``).

A score is the inner product of a user vector and an item vector, whatever
model kind produced them.

* :class:`BruteForce` scans every movie with numpy. Exact, and at MovieLens
  scale a matrix-vector product plus a partial sort, tens of microseconds:
  below ``ann_index.MIN_ITEMS`` movies nothing is faster.
* :class:`FaissIVF` asks the version's inverted-file index, which scans only
  the few cells nearest to the query. A few seen movies are excluded by
  over-fetching (k + the user's seen count) and filtering, widening the
  search until k unseen movies are found; a subset or a long exclusion list
  goes to the filter planner (:mod:`recommender_service.filtered_ivf`),
  which excludes inside the search. Either way exactly k distinct movies
  come back whenever k eligible ones exist, and the returned scores are
  recomputed as exact inner products, so they compare with the exact
  backend's.

Both answer ties the same way (:func:`top_k_indices`): equal scores go to the
lower movie index, so the approximate backend, the precomputed rankings and
the exact signature agree on every answer, not only on most.

**What may be answered** is narrowed in one place per backend, inside
retrieval, never as a pass over an answer, which is why k still come back
whenever k are left:

* ``exclude`` (distinct movie indices: seen, a filter's excluded ids, hidden
  movies) never comes back;
* ``subset`` (a :class:`~recommender_service.movie_filter.Subset`: the movies
  passing a request filter's genre, year and id conditions), when given, is
  the only place answers come from.

The exact backend masks before the partial sort, or scores only the subset
when it is small (:meth:`BruteForce.scores`); the faiss backend plans by how
much of the catalogue passes (see :class:`FaissIVF`). Precomputed rankings
(``recommender_service.rankings``) know no filter; the retriever answers a
filtered call from them only when the ranking still holds the right answer.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from recommender_service.movie_filter import Subset
from recommender_service.sessions import ReconstructedRows

if TYPE_CHECKING:  # filtered_ivf ranks with top_k_indices: imported at run time where FaissIVF builds its planner
    from recommender_service.filtered_ivf import FilterPlanner


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest finite scores, best first; ties go to the lower index.

    The common case (k below the number of movies, no tie across the k-th
    place, nothing infinite among the k best) is one argpartition over the
    raw scores plus a sort of k values: about a third of the general path's
    cost, which matters because this runs on every Recommend call. Anything
    else (ties at the boundary, seen movies among the k best because fewer
    than k are left, NaN) takes the general path, so the answer never depends
    on which path ran.
    """
    n = scores.shape[0]
    if 0 < k < n:
        part = np.argpartition(scores, n - k)[n - k:]
        values = scores[part]
        threshold = values.min()
        if np.isfinite(values).all() and np.count_nonzero(scores >= threshold) == k:
            return part[np.lexsort((part, -values))]
    return _top_k_general(scores, k)


def _top_k_general(scores: np.ndarray, k: int) -> np.ndarray:
    candidates = np.flatnonzero(np.isfinite(scores))
    k = min(k, candidates.size)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < candidates.size:
        values = scores[candidates]
        threshold = values[np.argpartition(-values, k - 1)[k - 1]]
        above = candidates[values > threshold]
        tied = candidates[values == threshold]  # ascending index: the lowest win
        candidates = np.concatenate([above, tied[: k - above.size]])
    return candidates[np.lexsort((candidates, -scores[candidates]))]


def _ranked(indices: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best score first, ties to the lower index (the exact backend's order)."""
    order = np.lexsort((indices, -scores))
    return indices[order], scores[order]


def _ranked_head(indices: np.ndarray, scores: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The first m of :func:`_ranked`, without sorting the rest.

    A tie across the k-th place widens the live search until the first candidate left out scores below
    the k-th, at worst to the whole catalogue: a full sort of a million candidates takes 0.19 s, this
    2 ms (m = 101, random scores).
    Everything scoring at least the m-th best score is kept (ties at it included) and only that is sorted,
    so the head is the full sort's head; a NaN among the m best takes the full sort.
    """
    if m <= 0 or indices.size <= 4 * m:
        order = np.lexsort((indices, -scores))[:m]
        return indices[order], scores[order]
    negated = -scores
    threshold = negated[np.argpartition(negated, m - 1)[m - 1]]
    if np.isnan(threshold):
        ranked_indices, ranked_scores = _ranked(indices, scores)
        return ranked_indices[:m], ranked_scores[:m]
    head = np.flatnonzero(negated <= threshold)
    order = head[np.lexsort((indices[head], negated[head]))][:m]
    return indices[order], scores[order]


# "Exclude nothing": the default of every ``exclude``, shared rather than allocated per call.
NO_ITEMS = np.zeros(0, dtype=np.int32)


class TopK(abc.ABC):
    """Finds the movies with the largest inner product with a query vector."""

    name: str = ""
    exact: bool = True

    @property
    @abc.abstractmethod
    def num_items(self) -> int: ...

    @abc.abstractmethod
    def top_k(self, query: np.ndarray, k: int, exclude: np.ndarray = NO_ITEMS,
              subset: Subset | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(indices, exact scores) of the min(k, movies left) best movies in ``subset`` (None: all) and not
        in ``exclude``, best first.

        ``exclude`` must hold distinct movie indices. ``exclude`` and ``subset``
        are the only arguments that narrow what may be answered (see the module
        docstring): a request filter arrives through them, never as a pass over
        the result.
        """

    def warm(self) -> None:
        """Prepares what the first filtered call would otherwise prepare on the request path (a backend
        with nothing to prepare does nothing)."""
        return None

    @abc.abstractmethod
    def similar(self, index: int, k: int, exclude: np.ndarray = NO_ITEMS,
                subset: Subset | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(indices, cosine similarities) of the k movies nearest to movie ``index``, itself left out,
        drawn from ``subset`` (None: all) and never from ``exclude``."""

    @property
    @abc.abstractmethod
    def item_rows(self) -> Any:
        """The item vectors as a query encoder reads them (``item_rows[indices, columns]``)."""

    def top_k_batch(self, queries: np.ndarray, k: int, exclude_indptr: np.ndarray,
                    exclude_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rankings for many queries at once: (indices [B, k], scores [B, k], counts [B]).

        Row b excludes ``exclude_indices[exclude_indptr[b]:exclude_indptr[b + 1]]``;
        entries past counts[b] are padding. The default answers query by query.
        """
        batch = queries.shape[0]
        k = min(k, self.num_items)
        indices = np.zeros((batch, k), dtype=np.int32)
        scores = np.zeros((batch, k), dtype=np.float32)
        counts = np.zeros(batch, dtype=np.int32)
        for row in range(batch):
            found, values = self.top_k(queries[row], k, exclude_indices[exclude_indptr[row]:exclude_indptr[row + 1]])
            counts[row] = found.size
            indices[row, :found.size] = found
            scores[row, :found.size] = values
        return indices, scores, counts


# A query with fewer non-zeros than this share of its width is scored from
# those columns alone. Session queries of the closed-form kinds are history
# rows over the whole catalogue (1,682 wide at MovieLens 100K, twice that for
# `sequential`) holding a few dozen non-zeros, where the full product reads
# the whole item matrix for nothing. Measured on column-major items (one
# BLAS thread): 1,682 x 1,682, dense 141 us, sparse 28 / 108 / 167 us at
# 100 / 400 / 600 non-zeros; 1,682 x 3,364, dense 527 us, sparse 111 us at
# 400. A quarter of the width is below both break-even points.
SPARSE_QUERY_SHARE = 1 / 4
# Narrower queries (two-tower and BPR vectors) are dense: looking for zeros
# would cost about as much as the product it might save.
SPARSE_QUERY_MIN_WIDTH = 256


def serving_layout(item_vectors: np.ndarray) -> np.ndarray:
    """Item vectors as :class:`BruteForce` keeps them: float32, column-major when wide.

    The sparse path reads a few whole columns. Row-major, each column is
    strided across the matrix: gathering 300 columns of 1,682 x 1,682 took
    457 us, more than the whole dense product (169 us); column-major they are
    contiguous (81 us), and the dense product is as fast either way. Already
    in layout (a mapped file from the loader), nothing is copied.
    """
    items = np.asarray(item_vectors, dtype=np.float32)
    if items.ndim == 2 and items.shape[1] >= SPARSE_QUERY_MIN_WIDTH:
        return np.asfortranarray(items)
    return np.ascontiguousarray(items)


# A subset passing fewer than 1 / SMALL_SUBSET_SHARE of the movies is scored alone (a gather of its
# rows, then a product), else the whole catalogue is scored and the rest masked: the gather costs about
# what the full product costs at a quarter of the rows.
SMALL_SUBSET_SHARE = 4


class BruteForce(TopK):
    """Exact: one pass over every item vector per query (over the query's
    non-zero columns only, when it is wide and mostly zeros)."""

    name = "exact"
    exact = True

    def __init__(self, item_vectors: np.ndarray):
        self._items = serving_layout(item_vectors)
        # Norms instead of a normalised copy of the vectors: same cosine, a
        # d-th of the memory.
        self._norms = np.maximum(np.linalg.norm(self._items, axis=1), 1e-12).astype(np.float32)

    @property
    def num_items(self) -> int:
        return self._items.shape[0]

    @property
    def item_rows(self) -> np.ndarray:
        return self._items

    def scores(self, query: np.ndarray, exclude: np.ndarray = NO_ITEMS, subset: Subset | None = None) -> np.ndarray:
        """Every movie's score, -inf for the excluded ones and those outside ``subset`` (so the partial
        sort never picks them)."""
        width = query.shape[0]
        nonzero = np.flatnonzero(query) if width >= SPARSE_QUERY_MIN_WIDTH else None
        if nonzero is not None and nonzero.size < width * SPARSE_QUERY_SHARE:
            scores = self._items[:, nonzero] @ query[nonzero]
        else:
            scores = self._items @ query
        if subset is not None:
            scores[~subset.mask] = -np.inf
        if exclude.size:
            scores[exclude] = -np.inf
        return scores

    def _subset_scores(self, query: np.ndarray, exclude: np.ndarray, subset: Subset) -> np.ndarray:
        """Scores of the subset's movies only (aligned with subset.passing), -inf for the excluded."""
        scores = self._items[subset.passing] @ query
        if exclude.size:
            scores[np.isin(subset.passing, exclude, assume_unique=True)] = -np.inf
        return scores

    def top_k(self, query: np.ndarray, k: int, exclude: np.ndarray = NO_ITEMS,
              subset: Subset | None = None) -> tuple[np.ndarray, np.ndarray]:
        if subset is not None and subset.size * SMALL_SUBSET_SHARE < self.num_items:
            # Few pass: score only them. subset.passing ascends, so a local index tie rule is the global one.
            scores = self._subset_scores(query, exclude, subset)
            best = top_k_indices(scores, k)
            return subset.passing[best], scores[best]
        scores = self.scores(query, exclude, subset)
        best = top_k_indices(scores, k)
        return best, scores[best]

    def similar(self, index: int, k: int, exclude: np.ndarray = NO_ITEMS,
                subset: Subset | None = None) -> tuple[np.ndarray, np.ndarray]:
        scores = (self._items @ self._items[index]) / (self._norms * self._norms[index])
        scores[index] = -np.inf
        if subset is not None:
            scores[~subset.mask] = -np.inf
        if exclude.size:
            scores[exclude] = -np.inf
        best = top_k_indices(scores, k)
        return best, scores[best]


class FaissIVF(TopK):
    """Approximate: a faiss IVF inner-product index (see movierec_common.ann_index).

    The index keeps the raw vectors (IVF-Flat), so exact rescoring and
    ``similar`` reconstruct the few vectors they need from it; no second copy
    of the item matrix is kept. Searches from many request threads at once are
    safe: faiss's search is const, and a wider search passes its own
    parameters instead of changing the index's.

    The plan, by what narrows the call:

    * nothing, or at most ``planner.large_exclude`` (1,000) excluded movies
      and no subset: the index's own ``nprobe``, the excluded filtered out of
      an over-fetch (:meth:`candidates`), as before filters existed;
    * a subset or a longer exclusion list: the :class:`~recommender_service.
      filtered_ivf.FilterPlanner`, which scans few passing movies exactly
      (a contiguous per-filter copy, or the gathered vectors of an id list),
      probes for many with a bitmap selector and filter-aware probing, and
      refuses long exclusion lists inside the search at a wider nprobe. Its
      per-filter state (at most 128 MB) lives as long as the version.
    """

    name = "faiss_ivf"
    exact = False

    def __init__(self, index: faiss.Index, item_norms: np.ndarray, max_first_fetch: int = 2048,
                 planner: FilterPlanner | None = None):
        from recommender_service.filtered_ivf import FilterPlanner

        self._index = index
        self._ivf = faiss.extract_index_ivf(index)
        self.nprobe = int(self._ivf.nprobe)
        self.nlist = int(self._ivf.nlist)
        self._norms = np.asarray(item_norms, dtype=np.float32)
        self._max_first_fetch = max_first_fetch
        self.planner = planner if planner is not None else FilterPlanner(index)

    def warm(self) -> None:
        self.planner.warm()

    @property
    def num_items(self) -> int:
        return int(self._index.ntotal)

    def vectors(self, indices: np.ndarray) -> np.ndarray:
        if len(indices) == 0:
            return np.zeros((0, self._index.d), dtype=np.float32)
        return self._index.reconstruct_batch(np.asarray(indices, dtype=np.int64))

    @property
    def item_rows(self) -> ReconstructedRows:
        return ReconstructedRows(self.vectors)

    def _search(self, queries: np.ndarray, k: int, nprobe: int) -> np.ndarray:
        if nprobe == self.nprobe:
            return self._index.search(queries, k)[1]
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        return self._index.search(queries, k, params=params)[1]

    def candidates(self, query: np.ndarray, k: int, exclude: np.ndarray = NO_ITEMS) -> np.ndarray:
        """Up to k distinct indices not in exclude, in the index's order (best first).

        Over-fetches k + |exclude| (at most max_first_fetch at first); when
        filtering leaves fewer than k, asks again for four times as many, or
        probes four times as many cells when the probed ones ran dry, until k
        are found or the whole catalogue has been searched.
        """
        total = self.num_items
        need = max(0, min(k, total - exclude.size))
        if need == 0:
            return NO_ITEMS
        fetch = min(total, max(need, min(k + exclude.size, self._max_first_fetch)))
        nprobe = self.nprobe
        queries = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        while True:
            labels = self._search(queries, fetch, nprobe)[0]
            found = labels[labels >= 0]
            kept = found[~np.isin(found, exclude)] if exclude.size else found
            if kept.size >= need or (nprobe >= self.nlist and fetch >= total):
                return kept[:need]
            if found.size < fetch and nprobe < self.nlist:
                nprobe = min(self.nlist, nprobe * 4)  # the probed cells ran dry
            else:
                fetch = min(total, fetch * 4)

    def top_k(self, query: np.ndarray, k: int, exclude: np.ndarray = NO_ITEMS,
              subset: Subset | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As the exact backend answers, ties included: a movie tied with the k-th
        on its exact score wins over it when its index is lower. The index
        returns tied movies in no particular order, so candidates are widened
        until the first one left out scores strictly below the k-th (one more
        candidate than k, in the common case of no tie there)."""
        if k <= 0:
            return NO_ITEMS, np.zeros(0, dtype=np.float32)
        if self.planner.handles(exclude, subset):
            return self.planner.top_k(query, k, exclude, subset)
        want = k + 1
        while True:
            found = self.candidates(query, want, exclude)
            # top_k_batch reproduces this product's bits (_rescore_like_live): change both or neither.
            indices, scores = _ranked_head(found, self.vectors(found) @ query, k + 1)
            if found.size < want or scores[k] < scores[k - 1]:
                return indices[:k], scores[:k]
            want *= 4

    def similar(self, index: int, k: int, exclude: np.ndarray = NO_ITEMS,
                subset: Subset | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cosine neighbours among the item's inner-product neighbours (over-fetched 4x); drawn from a
        subset, or past a long exclusion list, by the planner (exactly by cosine when few pass)."""
        query = self.vectors(np.array([index]))[0]
        itself = np.union1d(exclude, [index]).astype(np.int64)
        if self.planner.handles(itself, subset):
            found = self.planner.top_k(query, k, itself, subset, item_norms=self._norms)[0]
        else:
            found = self.candidates(query, min(self.num_items, 4 * (k + 1)), itself)
        cosine = (self.vectors(found) @ query) / (self._norms[found] * self._norms[index])
        best = top_k_indices(cosine, k)
        return found[best], cosine[best]

    def top_k_batch(self, queries: np.ndarray, k: int, exclude_indptr: np.ndarray,
                    exclude_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each row's answer as :meth:`top_k` gives it, bit for bit, computed for many rows at once.

        Batched index searches find each row's first k + 1 unseen candidates
        (:meth:`_batch_candidates`); chunks of rows are then rescored and ranked
        together exactly as the live path scores its k + 1 candidates
        (:meth:`_rescore_like_live`). The rare row the batch cannot answer as
        the live path would (too few candidates, a tie across the k-th place,
        or so many seen movies that the live path excludes them inside a wider
        search, the planner) is answered by :meth:`top_k` itself."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        batch, total = queries.shape[0], self.num_items
        k = min(k, total)
        indices = np.zeros((batch, max(k, 0)), dtype=np.int32)
        scores = np.zeros((batch, max(k, 0)), dtype=np.float32)
        counts = np.zeros(batch, dtype=np.int32)
        if k <= 0 or batch == 0:
            return indices, scores, counts
        excluded = np.diff(exclude_indptr)
        planned = excluded > self.planner.large_exclude  # the live path hands these to the planner
        candidates, found = self._batch_candidates(queries, k, exclude_indptr, exclude_indices, ~planned)
        # The live path scores min(k + 1, unseen movies) candidates; a row that found fewer cannot be copied.
        unsure = planned | (found < np.minimum(k + 1, total - excluded))
        unsure |= self._rescore_like_live(queries, k, candidates, found, ~unsure, indices, scores, counts)
        for row in np.flatnonzero(unsure).tolist():
            answer, values = self.top_k(queries[row], k, exclude_indices[exclude_indptr[row]:exclude_indptr[row + 1]])
            counts[row] = answer.size
            indices[row, :answer.size] = answer
            scores[row, :answer.size] = values
            indices[row, answer.size:] = 0
            scores[row, answer.size:] = 0
        return indices, scores, counts

    def _batch_candidates(self, queries: np.ndarray, k: int, exclude_indptr: np.ndarray,
                          exclude_indices: np.ndarray, searched: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(candidates [B, k + 1] int64, found [B]): the first k + 1 unseen movies of each ``searched`` row
        in the index's order (-1 past ``found``), the order :meth:`candidates` returns them in.

        One batched index search per over-fetch size (k + seen + 1, rounded up to a power of two), with
        seen movies filtered for the whole batch at once. Each search holds fewer queries than make
        faiss's coarse quantizer switch from its one-query kernel to BLAS
        (``distance_compute_blas_threshold``: queries x d at 1.15, queries in older releases): the BLAS
        product rounds the centroid scores differently, and where the nprobe-th and the next centroid
        nearly tie (21 of 50,000 users within 1e-6 relative at 1M movies) a batch could probe other lists than
        the live path's one-query search."""
        batch, total = queries.shape[0], self.num_items
        excluded = np.diff(exclude_indptr)
        wanted = np.minimum(k + excluded + 1, min(self._max_first_fetch, total))
        fetch = np.minimum(2 ** np.ceil(np.log2(wanted)).astype(np.int64), total)
        candidates = np.full((batch, k + 1), -1, dtype=np.int64)
        found = np.zeros(batch, dtype=np.int64)
        one_query_kernel = max(1, (int(faiss.cvar.distance_compute_blas_threshold) - 1) // self._index.d)
        for size in np.unique(fetch[searched]).tolist():
            rows_of_size = np.flatnonzero(searched & (fetch == size))
            chunk = max(1, min((1 << 22) // size, one_query_kernel))  # and the label matrix at most ~32 MB
            for start in range(0, rows_of_size.size, chunk):
                rows = rows_of_size[start:start + chunk]
                labels = self._search(queries[rows], size, self.nprobe)
                keep = labels >= 0
                seen_counts = excluded[rows]
                if seen_counts.sum():  # one sorted key per (row, seen movie), looked up all at once
                    owner = np.repeat(np.arange(rows.size, dtype=np.int64), seen_counts)
                    seen = np.concatenate([exclude_indices[exclude_indptr[r]:exclude_indptr[r + 1]] for r in rows])
                    seen_keys = np.sort(owner * total + seen)
                    keys = np.arange(rows.size, dtype=np.int64)[:, None] * total + labels
                    position = np.minimum(np.searchsorted(seen_keys, keys), seen_keys.size - 1)
                    keep &= seen_keys[position] != keys
                rank = np.cumsum(keep, axis=1)
                take = keep & (rank <= k + 1)
                r, c = np.nonzero(take)
                candidates[rows[r], rank[r, c] - 1] = labels[r, c]
                found[rows] = take.sum(axis=1)
        return candidates, found

    def _rescore_like_live(self, queries: np.ndarray, k: int, candidates: np.ndarray, found: np.ndarray,
                           rows: np.ndarray, indices: np.ndarray, scores: np.ndarray,
                           counts: np.ndarray) -> np.ndarray:
        """Scores, ranks and writes the answers of the ``rows`` (a mask) from their ``found`` candidates;
        returns the mask of rows whose k + 1 candidates tie across the k-th place (the live path widens).

        Bit for bit as :meth:`top_k`: numpy's stacked matmul runs the same BLAS matrix-vector product per
        row as ``vectors @ query`` does, and that product's float32 bits depend on the row count (OpenBLAS
        sums the last n mod 4 rows with a tail kernel), so each row is scored over exactly the
        candidates the live path scores: its k + 1 (or all, when fewer are unseen), in the index's order.
        The ranking is ``_ranked``'s sort (score down, then index up), row by row."""
        tied = np.zeros(queries.shape[0], dtype=bool)
        d = self._index.d
        for n in np.unique(found[rows]).tolist():
            if n == 0:  # nothing unseen is left: the live path answers nothing too
                continue
            rows_of_n = np.flatnonzero(rows & (found == n))
            chunk = max(1, (1 << 22) // (n * d))  # bounds the reconstructed vectors at ~16 MB
            for start in range(0, rows_of_n.size, chunk):
                block = rows_of_n[start:start + chunk]
                ids = candidates[block, :n]
                vectors = self._index.reconstruct_batch(ids.ravel()).reshape(block.size, n, d)
                values = np.matmul(vectors, queries[block][:, :, None])[:, :, 0]
                order = np.lexsort((ids, -values), axis=-1)
                ids, values = np.take_along_axis(ids, order, 1), np.take_along_axis(values, order, 1)
                answered = min(n, k)
                indices[block, :answered] = ids[:, :answered]
                scores[block, :answered] = values[:, :answered]
                counts[block] = answered
                if n > k:  # the live path returns only when the first candidate left out scores below the k-th
                    tied[block] = ~(values[:, k] < values[:, k - 1])
        return tied
