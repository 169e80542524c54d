"""Top-k retrieval for one loaded model version.

A score is the inner product of a user vector and an item vector, whatever
model kind produced them. Finding the k best is the job of a :class:`TopK`
backend, one interface with two implementations (as TFRS's
``layers/factorized_top_k.py``: ``TopK`` with ``BruteForce`` and ``ScaNN``):

* :class:`BruteForce` scans every movie with numpy. Exact, and at MovieLens
  scale a matrix-vector product plus a partial sort, tens of microseconds:
  below ``ann_index.MIN_ITEMS`` movies nothing is faster.
* :class:`FaissIVF` asks the version's inverted-file index, which scans only
  the few cells nearest to the query. Seen movies are excluded by
  over-fetching (k + the user's seen count) and filtering, widening the
  search until k unseen movies are found, so exactly k distinct movies come
  back whenever k unseen ones exist; the returned scores are recomputed as
  exact inner products, so they compare with the exact backend's.

:class:`Retriever` adds the model around the backend: user and movie ids,
titles, seen lists, cold start, rankings precomputed per user, and sessions
(queries built from the movies a caller just saw, see ``sessions``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from movierec_common.artifact import ModelArtifact, UserMovieIndex
from movierec_common.session_query import QueryEncoder
from recommender_service.sessions import ReconstructedRows, SessionQueries, SessionsUnsupported, first_occurrences


class Scored(NamedTuple):
    """One ranked movie. A NamedTuple rather than a frozen dataclass because ten
    are built per call on the request path, and a frozen dataclass's __init__
    (one object.__setattr__ per field) costs several times a tuple's."""

    movie_id: int
    title: str
    score: float


@dataclass(frozen=True)
class Recommendation:
    items: list[Scored]
    cold_start: bool
    unknown_movie_ids: list[int] = field(default_factory=list)  # recent movies the version does not know


class UnknownMovie(KeyError):
    pass


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


_NO_ITEMS = np.zeros(0, dtype=np.int32)


# ----------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------

class TopK(abc.ABC):
    """Finds the movies with the largest inner product with a query vector."""

    name: str = ""
    exact: bool = True

    @property
    @abc.abstractmethod
    def num_items(self) -> int: ...

    @abc.abstractmethod
    def top_k(self, query: np.ndarray, k: int, exclude: np.ndarray = _NO_ITEMS) -> tuple[np.ndarray, np.ndarray]:
        """(indices, exact scores) of the min(k, movies left) best movies not in exclude, best first.

        ``exclude`` must hold distinct movie indices.
        """

    @abc.abstractmethod
    def similar(self, index: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, cosine similarities) of the k movies nearest to movie ``index``, itself left out."""

    @property
    @abc.abstractmethod
    def item_rows(self):
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

    def scores(self, query: np.ndarray, exclude: np.ndarray = _NO_ITEMS) -> np.ndarray:
        width = query.shape[0]
        if width >= SPARSE_QUERY_MIN_WIDTH:
            nonzero = np.flatnonzero(query)
            if nonzero.size < width * SPARSE_QUERY_SHARE:
                scores = self._items[:, nonzero] @ query[nonzero]
                if exclude.size:
                    scores[exclude] = -np.inf
                return scores
        scores = self._items @ query
        if exclude.size:
            scores[exclude] = -np.inf
        return scores

    def top_k(self, query, k, exclude=_NO_ITEMS):
        scores = self.scores(query, exclude)
        best = top_k_indices(scores, k)
        return best, scores[best]

    def similar(self, index, k):
        scores = (self._items @ self._items[index]) / (self._norms * self._norms[index])
        scores[index] = -np.inf
        best = top_k_indices(scores, k)
        return best, scores[best]


class FaissIVF(TopK):
    """Approximate: a faiss IVF inner-product index (see movierec_common.ann_index).

    The index keeps the raw vectors (IVF-Flat), so exact rescoring and
    ``similar`` reconstruct the few vectors they need from it; no second copy
    of the item matrix is kept. Searches from many request threads at once are
    safe: faiss's search is const, and a wider search passes its own
    parameters instead of changing the index's.
    """

    name = "faiss_ivf"
    exact = False

    def __init__(self, index, item_norms: np.ndarray, max_first_fetch: int = 2048):
        import faiss

        self._faiss = faiss
        self._index = index
        self._ivf = faiss.extract_index_ivf(index)
        self.nprobe = int(self._ivf.nprobe)
        self.nlist = int(self._ivf.nlist)
        self._norms = np.asarray(item_norms, dtype=np.float32)
        self._max_first_fetch = max_first_fetch

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
        return self._index.search(queries, k, params=self._faiss.SearchParametersIVF(nprobe=nprobe))[1]

    def candidates(self, query: np.ndarray, k: int, exclude: np.ndarray = _NO_ITEMS) -> np.ndarray:
        """Up to k distinct indices not in exclude, in the index's order (best first).

        Over-fetches k + |exclude| (at most max_first_fetch at first); when
        filtering leaves fewer than k, asks again for four times as many, or
        probes four times as many cells when the probed ones ran dry, until k
        are found or the whole catalogue has been searched.
        """
        total = self.num_items
        need = max(0, min(k, total - exclude.size))
        if need == 0:
            return _NO_ITEMS
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

    def top_k(self, query, k, exclude=_NO_ITEMS):
        """As the exact backend answers, ties included: a movie tied with the k-th
        on its exact score wins over it when its index is lower. The index
        returns tied movies in no particular order, so candidates are widened
        until the first one left out scores strictly below the k-th (one more
        candidate than k, in the common case of no tie there)."""
        if k <= 0:
            return _NO_ITEMS, np.zeros(0, dtype=np.float32)
        want = k + 1
        while True:
            found = self.candidates(query, want, exclude)
            indices, scores = _ranked(found, self.vectors(found) @ query)
            if found.size < want or scores[k] < scores[k - 1]:
                return indices[:k], scores[:k]
            want *= 4

    def similar(self, index, k):
        """Cosine neighbours among the item's inner-product neighbours (over-fetched 4x)."""
        query = self.vectors(np.array([index]))[0]
        found = self.candidates(query, min(self.num_items, 4 * (k + 1)), np.array([index]))
        cosine = (self.vectors(found) @ query) / (self._norms[found] * self._norms[index])
        best = top_k_indices(cosine, k)
        return found[best], cosine[best]

    def top_k_batch(self, queries, k, exclude_indptr, exclude_indices):
        """Batched index searches, one per over-fetch size (k + seen + 1, rounded
        up to a power of two), with seen movies filtered for the whole batch at
        once. The rare row left short, or with a tie across the k-th place,
        falls back to :meth:`top_k`, so a ranking computed here is the answer
        the live path gives."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        batch, total = queries.shape[0], self.num_items
        k = min(k, total)
        excluded = np.diff(exclude_indptr)
        need = np.minimum(k, total - excluded)
        # One past the k-th, to see whether a tie crosses the cut (see top_k).
        wanted = np.minimum(k + excluded + 1, min(self._max_first_fetch, total))
        fetch = np.minimum(2 ** np.ceil(np.log2(wanted)).astype(np.int64), total)
        indices = np.zeros((batch, k), dtype=np.int32)
        scores = np.zeros((batch, k), dtype=np.float32)
        counts = np.zeros(batch, dtype=np.int32)
        after = np.full(batch, -1, dtype=np.int64)  # the first unseen candidate past the k-th, -1: none found
        for size in np.unique(fetch).tolist():
            rows_of_size = np.flatnonzero(fetch == size)
            chunk = max(1, (1 << 22) // size)  # bounds the label matrix at ~32 MB
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
                take = keep & (rank <= k)
                got = take.sum(axis=1)
                r, c = np.nonzero(take)
                indices[rows[r], rank[r, c] - 1] = labels[r, c]
                counts[rows] = got
                r, c = np.nonzero(keep & (rank == k + 1))
                after[rows[r]] = labels[r, c]
        for row in range(batch):  # exact scores, the same way the live path computes them
            n = counts[row]
            found = indices[row, :n].astype(np.int64)
            found, values = _ranked(found, self.vectors(found) @ queries[row])
            indices[row, :n] = found
            scores[row, :n] = values
        # Rows the batch cannot answer as the live path would: too few candidates (over-fetch was not enough),
        # a tie across the k-th place, or nothing fetched past it to tell.
        unsure = np.flatnonzero((counts < need) | ((counts == k) & (after < 0) & (fetch < total)))
        tied = np.flatnonzero((counts == k) & (after >= 0))
        if tied.size:
            past = np.einsum("ij,ij->i", self.vectors(after[tied]), queries[tied])
            unsure = np.union1d(unsure, tied[past >= scores[tied, k - 1]])
        for row in unsure.tolist():
            found, values = self.top_k(queries[row], k, exclude_indices[exclude_indptr[row]:exclude_indptr[row + 1]])
            counts[row] = found.size
            indices[row, :found.size] = found
            scores[row, :found.size] = values
        return indices, scores, counts


# ----------------------------------------------------------------------------
# The model around the backend
# ----------------------------------------------------------------------------

class Titles:
    """Movie titles as one UTF-8 blob plus offsets, decoded only for the movies answered.

    A million titles as Python strings cost ~90 MB, a million objects to
    build, and, pickled between processes, a long GIL hold to rebuild; this
    costs their bytes and two numpy arrays.
    """

    __slots__ = ("blob", "offsets", "_bytes")

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self.blob = blob          # uint8 [total bytes]
        self.offsets = offsets    # int64 [I + 1]
        self._bytes = memoryview(blob)

    @classmethod
    def from_strings(cls, titles) -> Titles:
        encoded = [str(t).encode("utf-8") for t in titles]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    def __getitem__(self, i: int) -> str:
        return str(self._bytes[self.offsets[i]:self.offsets[i + 1]], "utf-8")

    def take(self, indices: np.ndarray) -> list[str]:
        starts = self.offsets[indices].tolist()
        ends = self.offsets[np.asarray(indices) + 1].tolist()
        view = self._bytes
        return [str(view[s:e], "utf-8") for s, e in zip(starts, ends, strict=True)]

    def tolist(self) -> list[str]:
        return self.take(np.arange(len(self)))

    def __getstate__(self):
        return self.blob, self.offsets

    def __setstate__(self, state):
        self.__init__(*state)


@dataclass(frozen=True)
class Catalogue(UserMovieIndex):
    """Everything a Retriever needs besides the item vectors (its TopK holds those).

    Derived once per version in the loader process, so the serving process
    receives flat arrays and builds no per-movie Python objects.
    """

    user_ids: np.ndarray        # [U] str
    user_vectors: np.ndarray    # [U, d] float32
    movie_ids: np.ndarray       # [I] int64
    titles: Titles
    seen_indptr: np.ndarray     # [U + 1] int64
    seen_indices: np.ndarray    # [nnz] int32, distinct and ascending per user: what exclusion needs
    popular: np.ndarray         # [I] int32, most popular first (ties: lower index)
    popular_share: np.ndarray   # [I] float32, share of all interactions, aligned with popular
    movie_order: np.ndarray     # [I] int32, argsort(movie_ids): id -> index by binary search
    # Each user's history as the artifact keeps it, oldest first: what a session query needs.
    history_indptr: np.ndarray  # [U + 1] int64, the artifact's seen_indptr
    history_indices: np.ndarray  # [nnz'] int32

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact) -> Catalogue:
        users, items = artifact.num_users, artifact.num_items
        rows = np.repeat(np.arange(users, dtype=np.int64), np.diff(artifact.seen_indptr))
        keys = np.unique(rows * items + artifact.seen_indices.astype(np.int64))
        indptr = np.zeros(users + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys // items, minlength=users), out=indptr[1:])
        seen = (keys % items).astype(np.int32)
        history_indptr = np.ascontiguousarray(artifact.seen_indptr, dtype=np.int64)
        history = np.ascontiguousarray(artifact.seen_indices, dtype=np.int32)
        if np.array_equal(history_indptr, indptr) and np.array_equal(history, seen):
            history_indptr, history = indptr, seen  # rows already distinct and in movie order: one copy
        popularity = artifact.popularity.astype(np.float64)
        popular = top_k_indices(popularity, items).astype(np.int32)
        share = (popularity[popular] / (popularity.sum() or 1.0)).astype(np.float32)
        return cls(
            user_ids=np.asarray(artifact.user_ids, dtype=object),
            user_vectors=np.ascontiguousarray(artifact.user_vectors, dtype=np.float32),
            movie_ids=np.ascontiguousarray(artifact.movie_ids, dtype=np.int64),
            titles=Titles.from_strings(artifact.titles),
            seen_indptr=indptr,
            seen_indices=seen,
            popular=popular,
            popular_share=share,
            movie_order=np.argsort(artifact.movie_ids, kind="stable").astype(np.int32),
            history_indptr=history_indptr,
            history_indices=history,
        )


# Each ranked user's best PRECOMPUTED_TOP unseen movies are computed once per
# version (in the loader process), so the common call is a table lookup.
PRECOMPUTED_TOP = 100
# Rankings cover as many users as fit in this budget (~808 bytes a user at
# top 100: about 330,000 users); the most active users first, the rest are
# answered live.
RANKING_BUDGET_BYTES = 256 * 1024 * 1024
# An exact backend pays a full scan per ranked user, so it also stops at this
# many user x movie scores (at most ~10 s of loader time; MovieLens 1M is 22 M).
EXACT_RANKING_MAX_SCORES = 500_000_000


@dataclass(frozen=True)
class Rankings:
    """Per-user top movies, computed when a version is loaded."""

    top: int
    rows: np.ndarray      # [U] int32: the user's row, or -1 (answered live)
    indices: np.ndarray   # [R, top] int32
    scores: np.ndarray    # [R, top] float32
    counts: np.ndarray    # [R] int32: valid entries (fewer when fewer unseen movies exist)

    @property
    def num_users(self) -> int:
        return int(self.counts.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.rows, self.indices, self.scores, self.counts))

    @staticmethod
    def bytes_per_user(top: int) -> int:
        return top * 8 + 8

    @classmethod
    def compute(cls, catalogue: Catalogue, top_k: TopK, budget_bytes: int = RANKING_BUDGET_BYTES,
                top: int = PRECOMPUTED_TOP) -> Rankings:
        users, items = catalogue.num_users, catalogue.num_items
        top = min(top, items)
        ranked = min(users, max(0, budget_bytes) // cls.bytes_per_user(top))
        if top_k.exact:
            ranked = min(ranked, EXACT_RANKING_MAX_SCORES // max(items, 1))
        if ranked < users:  # the most active users are the likeliest callers
            activity = np.diff(catalogue.seen_indptr)
            chosen = np.sort(np.argsort(-activity, kind="stable")[:ranked])
        else:
            chosen = np.arange(users)
        rows = np.full(users, -1, dtype=np.int32)
        rows[chosen] = np.arange(chosen.size, dtype=np.int32)
        if chosen.size == 0:
            return cls(top, rows, np.zeros((0, top), np.int32), np.zeros((0, top), np.float32), np.zeros(0, np.int32))
        starts, ends = catalogue.seen_indptr[chosen], catalogue.seen_indptr[chosen + 1]
        indptr = np.zeros(chosen.size + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=indptr[1:])
        pieces = [catalogue.seen_indices[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        seen = np.concatenate(pieces) if indptr[-1] else _NO_ITEMS
        indices, scores, counts = top_k.top_k_batch(catalogue.user_vectors[chosen], top, indptr, seen)
        return cls(top, rows, indices, scores, counts)


class Retriever:
    """Answers queries for one model version; immutable once built.

    The common call (a ranked user, seen movies excluded, k <= the ranking
    depth) is answered from the precomputed rankings, so the request path runs
    no numpy arithmetic at all. Why that matters more than the microseconds it
    saves: numpy releases the GIL around its kernels, and in a server with
    eight worker threads every release is a chance for another thread to take
    the GIL and hold it for up to a switch interval, so a handful of tiny
    kernels per call turn into tail latency under concurrency. Larger k,
    exclude_seen=false and users beyond the ranking budget ask the backend
    live; both paths score with the same code, so they agree.

    Sessions (:meth:`recommend_session`) are always live: the query depends
    on the movies sent, so there is nothing to precompute. A version
    without a ``query_encoder`` answers everything else but refuses them.
    """

    def __init__(self, source: ModelArtifact | Catalogue, top_k: TopK | None = None, *,
                 rankings: Rankings | None = None, ranking_budget_bytes: int = RANKING_BUDGET_BYTES,
                 query_encoder: QueryEncoder | None = None):
        if isinstance(source, ModelArtifact):
            top_k = top_k or BruteForce(source.item_vectors)
            source = Catalogue.from_artifact(source)
        if top_k is None:
            raise TypeError("a Catalogue needs its TopK backend")
        self.catalogue = source
        self.top_k = top_k
        self.sessions = None if query_encoder is None else SessionQueries(
            query_encoder, source.user_vectors, source.history_indptr, source.history_indices, top_k.item_rows)
        self._user_index = {user_id: i for i, user_id in enumerate(source.user_ids.tolist())}
        self._user_vectors = source.user_vectors
        self._movie_ids = source.movie_ids
        self._titles = source.titles
        self._sorted_movie_ids = source.movie_ids[source.movie_order]
        self.rankings = rankings if rankings is not None else Rankings.compute(source, top_k, ranking_budget_bytes)

    @property
    def num_users(self) -> int:
        return len(self._user_index)

    @property
    def num_items(self) -> int:
        return int(self._movie_ids.shape[0])

    def knows_user(self, user_id: str) -> bool:
        return user_id in self._user_index

    def recommend(self, user_id: str, k: int, exclude_seen: bool = True) -> Recommendation:
        user_index = self._user_index.get(user_id)
        if user_index is None:
            popular = self.catalogue.popular[:k]
            return Recommendation(self._scored(popular, self.catalogue.popular_share[:k]), cold_start=True)
        rankings = self.rankings
        if exclude_seen and k <= rankings.top:
            row = rankings.rows[user_index]
            if row >= 0:
                n = min(k, rankings.counts[row])
                return Recommendation(self._scored(rankings.indices[row, :n], rankings.scores[row, :n]),
                                      cold_start=False)
        return self.recommend_live(user_index, k, exclude_seen)

    def recommend_live(self, user_index: int, k: int, exclude_seen: bool = True) -> Recommendation:
        """Asks the backend, skipping the rankings (the smoke test checks both paths)."""
        exclude = self.catalogue.seen_items(user_index) if exclude_seen else _NO_ITEMS
        indices, scores = self.top_k.top_k(self._user_vectors[user_index], k, exclude)
        return Recommendation(self._scored(indices, scores), cold_start=False)

    def recommend_session(self, user_id: str, k: int, recent_movie_ids, exclude_seen: bool = True) -> Recommendation:
        """Top k for a caller who just saw ``recent_movie_ids`` (oldest first).

        A known user's recent movies are the newest part of their history; an
        unknown user's are the whole of it, and the answer is personal as soon
        as one of them is known. With exclude_seen, the answer leaves out the
        user's seen movies and the recent ones. Movies this version does not
        know are reported back and otherwise ignored; with none known, the
        answer is what it would have been without a session. Raises
        SessionsUnsupported for a version without a query encoder.
        """
        if self.sessions is None:
            raise SessionsUnsupported("the version has no query encoder")
        ids = np.asarray(recent_movie_ids, dtype=np.int64).reshape(-1)
        indices = self.movie_indices(ids)
        known = indices >= 0
        unknown = first_occurrences(ids[~known]) if not known.all() else []
        recent = indices[known]
        if recent.size == 0:
            answer = self.recommend(user_id, k, exclude_seen)
            return Recommendation(answer.items, answer.cold_start, unknown)
        user_index = self._user_index.get(user_id)
        if user_index is None:
            query = self.sessions.for_visitor(recent)
            exclude = np.unique(recent) if exclude_seen else _NO_ITEMS
        else:
            query = self.sessions.for_user(user_index, recent)
            exclude = np.union1d(self.catalogue.seen_items(user_index), recent) if exclude_seen else _NO_ITEMS
        indices, scores = self.top_k.top_k(query, k, exclude)
        return Recommendation(self._scored(indices, scores), cold_start=False, unknown_movie_ids=unknown)

    def movie_indices(self, movie_ids: np.ndarray) -> np.ndarray:
        """Item index of every id (-1 where this version does not know it), by one vectorised binary search."""
        ids = np.asarray(movie_ids, dtype=np.int64)
        sorted_ids = self._sorted_movie_ids
        position = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.shape[0] - 1)
        return np.where(sorted_ids[position] == ids, self.catalogue.movie_order[position], -1).astype(np.int64)

    def movie_index(self, movie_id: int) -> int:
        index = int(self.movie_indices(np.array([movie_id], dtype=np.int64))[0])
        if index < 0:
            raise UnknownMovie(movie_id)
        return index

    def similar_items(self, movie_id: int, k: int) -> tuple[Scored, list[Scored]]:
        """Cosine neighbours in the item space: for a two-tower model, movies its
        towers place together; for EASE, movies with similar co-rating weights."""
        index = self.movie_index(movie_id)
        query = Scored(int(self._movie_ids[index]), self._titles[index], 1.0)
        indices, scores = self.top_k.similar(index, k)
        return query, self._scored(indices, scores)

    def _scored(self, indices: np.ndarray, scores: np.ndarray) -> list[Scored]:
        # One gather and one tolist() per field instead of a numpy scalar per item.
        return [Scored(movie_id, title, score) for movie_id, title, score in
                zip(self._movie_ids[indices].tolist(), self._titles.take(indices), scores.tolist(), strict=True)]
