"""How the faiss backend answers a filtered call: the planner behind
:class:`~recommender_service.top_k.FaissIVF` for a ``subset`` or a large ``exclude``.

Plain IVF probing breaks under a filter that removes whole regions of the
vector space (a genre): the ``nprobe`` cells nearest to the query may hold no
passing movie at all. Measured at 1M x 64 (IVF 4,096 lists, one thread; the
issue-18 planner study): nprobe 16 with faiss's ID selector gave recall@10
0.43 for a 10% genre and 0.16 for a 1% two-genre filter. So the planner
chooses by how many movies pass:

1. **Few pass** (a keyed genre/year filter passing at most ``exact_max``
   movies): an exact scan of a contiguous float32 copy of their vectors, kept
   per filter. Exact answers, ties to the lower index.
2. **A caller's id list** (``only_movie_ids``, no key, made per call) of at
   most ``ids_max`` movies: their vectors are gathered from the index and
   scanned exactly. Gathering costs ~7x a contiguous scan, hence the lower
   threshold.
3. **Many pass**: IVF with a bitmap selector and *filter-aware probing*:
   lists in centroid order, lists without a passing movie skipped, probing
   stops once the probed lists hold ``probe_budget`` passing movies. It adapts
   to where the passing movies are, not only to how many there are.
4. **No subset, a large exclude** (seen movies of a heavy user, a filter's
   10,000 excluded ids): the unfiltered probe widened to ``exclude_nprobe``
   with ``IDSelectorNot(IDSelectorBitmap)``, excluded inside the search.

Exclusions are always applied inside the search (a -inf score, a cleared
bit), never as a pass over an answer, so an answer holds min(k, eligible)
movies: a search that comes back short while more are eligible is widened
(the budget or nprobe doubled), and finally replaced by an exact scan of the
eligible movies. Every returned score is the exact inner product of the
reconstructed vector with the query, ranked best first, ties to the lower index.

Per-filter state lives under ``subset.key`` in a byte-bounded LRU shared by
the request threads (:class:`StateCache`).

Through ``FaissIVF.top_k`` at 1M x 64, one thread, warm state, 4,000 calls a
class (recall@10 vs the exact filtered answer; p50 / p99 ms):

=========================  ==========================  ======  ===========
filter (passing)           path                        recall  p50 / p99
=========================  ==========================  ======  ===========
none                       over-fetch, nprobe 32       0.980   0.16 / 0.23
genre (9%)                 bitmap, budget 12k          0.980   0.73 / 1.19
two genres AND (1%)        exact, cached sub-matrix    1.000   0.06 / 0.10
500 ids                    exact, gathered             1.000   0.07 / 0.11
exclude 10k (random)       Not(bitmap), nprobe 128     0.997   0.64 / 0.76
exclude 10k (own top 200)  Not(bitmap), nprobe 128     0.971   0.65 / 0.78
years (36%)                bitmap, budget 12k          0.980   0.76 / 1.09
=========================  ==========================  ======  ===========

A filter's first call builds its state (0.2-1.7 ms at 1M; the first filtered
call of a version also reads the movie-to-list map, ~10 ms).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import faiss
import numpy as np

from recommender_service.movie_filter import Subset
from recommender_service.top_k import top_k_indices

# Thresholds, measured at 1M movies x 64 dims, one thread (the issue-18 planner study, "Recommended planner").
# Exact over a cached contiguous sub-matrix: 0.50 / 0.61 ms (p50 / p99) at 50k passing, 1.10 / 1.28 ms
# at 100k; from about 50k every IVF path is cheaper at recall >= 0.95.
EXACT_MAX_PASSING = 50_000
# An id list cannot be cached, so its vectors are gathered per call: 0.76 / 1.0 ms at 20k into a buffer,
# 2.5 / 7.0 ms at 50k. Above 20k it takes the IVF path with a bitmap built per call.
IDS_MAX_PASSING = 20_000
# Filter-aware probing stops when the probed lists hold this many passing movies: 8k gave recall@10
# >= 0.956 and 16k >= 0.985 in every class; 12k gave 0.980 at 0.65 / 1.09 ms for a 10% genre and
# 0.980 at 0.70 / 1.16 ms for a 36% year window.
PROBE_BUDGET = 12_000
# More excluded movies than this (without a subset) are excluded by a selector inside the search rather
# than by over-fetching: IDSelectorNot(IDSelectorBitmap) of 10k ids costs 0.06 ms to build and searched
# in 0.16 ms vs 1.11 ms for over-fetching 2,048 plus isin, same answers.
LARGE_EXCLUDE = 1_000
# An exclusion holding the user's own best movies ("already shown") needs a wider search: with the
# top 200 among 10k excluded, recall@10 was 0.905 at nprobe 32, 0.945 at 64, 0.972 at 128 (0.57 / 0.71 ms).
EXCLUDE_NPROBE = 128
# Per-filter state: a 50k-passing sub-matrix is 12.8 MB at 64 dims, a bitmap plus list counts ~0.2 MB.
STATE_CACHE_BYTES = 128 * 1024 * 1024
# similar() ranks by cosine, which inner-product order reaches late when norms vary: on the test catalogue
# (lognormal(0, 0.3) norms) the 10th cosine neighbour sat at inner-product rank 204 (p50) to 1,044 (max).
# So a cosine call keeps every movie its probed lists hold (the search scans them anyway), ranks them by
# faiss's inner product over the norm, and rescores the best COSINE_SHORTLIST x (k + 1) exactly.
COSINE_SHORTLIST = 4

_NO_INDICES = np.zeros(0, dtype=np.int64)
_NO_SCORES = np.zeros(0, dtype=np.float32)
# Below one id per this many movies, setting bits one by one beats packing a whole bool mask (at 1M:
# 500 ids 0.010 vs 0.042 ms, 10k ids 0.060 vs 0.035 ms).
_SPARSE_IDS_PER_MOVIE = 256

Answer = tuple[np.ndarray, np.ndarray]
# search(fetch, widen) -> (labels, faiss's inner products, whether the whole eligible set was searched)
Search = Callable[[int, int], tuple[np.ndarray, np.ndarray, bool]]


def _ranked(indices: np.ndarray, scores: np.ndarray) -> Answer:
    """Best score first, ties to the lower index (the exact backend's order)."""
    order = np.lexsort((indices, -scores))
    return indices[order], scores[order]


def positions_in(sorted_values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions in ``sorted_values`` (ascending, distinct) of the ``ids`` it holds."""
    if not ids.size or not sorted_values.size:
        return _NO_INDICES
    position = np.minimum(np.searchsorted(sorted_values, ids), sorted_values.size - 1)
    return position[sorted_values[position] == ids]


def bitmap_of(ids: np.ndarray, num_items: int) -> np.ndarray:
    """faiss's IDSelectorBitmap layout: bit (i & 7) of byte i >> 3 is set for each of ``ids``."""
    if ids.size * _SPARSE_IDS_PER_MOVIE < num_items:
        bitmap = np.zeros((num_items + 7) // 8, dtype=np.uint8)
        ids = ids.astype(np.int64, copy=False)
        np.bitwise_or.at(bitmap, ids >> 3, np.left_shift(1, ids & 7).astype(np.uint8))
        return bitmap
    mask = np.zeros(num_items, dtype=bool)
    mask[ids] = True
    return np.packbits(mask, bitorder="little")


def lists_holding(budget: int, centroid_scores: np.ndarray, counts: np.ndarray,
                  live: np.ndarray) -> tuple[np.ndarray, bool]:
    """Filter-aware probing: the ``live`` lists (those holding an eligible movie; ``counts`` per list)
    best centroid score first, as many as hold ``budget`` eligible movies; and whether that is all.

    Sorts only a guessed head of the lists (twice the lists an average live list would need), widening
    the guess when it falls short: sorting all ~2,400 live lists of a 10% genre at 1M cost ~0.1 ms a call.
    """
    total = int(counts[live].sum())
    guess = min(live.size, 2 * budget * live.size // max(total, 1) + 1)
    while True:
        head = live if guess >= live.size else live[np.argpartition(-centroid_scores[live], guess)[:guess]]
        order = head[np.argsort(-centroid_scores[head])]
        held = np.cumsum(counts[order])
        if guess >= live.size or (held.size and held[-1] >= budget):
            take = min(int(np.searchsorted(held, budget)) + 1, order.size)
            return order[:take], take == live.size
        guess *= 2


class FilterState:
    """What the planner keeps for one keyed filter: the passing movies' vectors when few pass (an
    exact scan), else a faiss bitmap and how many passing movies each inverted list holds."""

    __slots__ = ("passing", "matrix", "bitmap", "list_counts", "nbytes")

    def __init__(self, passing: np.ndarray, matrix: np.ndarray | None = None,
                 bitmap: np.ndarray | None = None, list_counts: np.ndarray | None = None):
        self.passing = passing
        self.matrix = matrix
        self.bitmap = bitmap
        self.list_counts = list_counts
        self.nbytes = sum(int(a.nbytes) for a in (passing, matrix, bitmap, list_counts) if a is not None)


class StateCache:
    """FilterStates by subset key, least recently used out first, at most ``budget_bytes`` of them.
    Request threads share it; the lock is held for dict operations only (a state is built outside
    it, and two threads missing at once build the same state, one of which is kept)."""

    def __init__(self, budget_bytes: int = STATE_CACHE_BYTES):
        self.budget_bytes = budget_bytes
        self.nbytes = 0
        self._entries: OrderedDict[Hashable, FilterState] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> FilterState | None:
        with self._lock:
            state = self._entries.get(key)
            if state is not None:
                self._entries.move_to_end(key)
            return state

    def put(self, key: Hashable, state: FilterState) -> None:
        if state.nbytes > self.budget_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            while self.nbytes + state.nbytes > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.nbytes -= evicted.nbytes
            self._entries[key] = state
            self.nbytes += state.nbytes


class FilterPlanner:
    """Answers top-k calls narrowed by a :class:`Subset` and/or a large ``exclude`` from a faiss
    IVF-Flat inner-product index (see the module docstring for the plan and its thresholds).

    The thresholds are parameters so that tests can drive every path on a small catalogue.
    """

    def __init__(self, index: Any, *, exact_max: int = EXACT_MAX_PASSING, ids_max: int = IDS_MAX_PASSING,
                 probe_budget: int = PROBE_BUDGET, large_exclude: int = LARGE_EXCLUDE,
                 exclude_nprobe: int = EXCLUDE_NPROBE, cache_bytes: int = STATE_CACHE_BYTES):
        self._index = index
        self._ivf: Any = faiss.extract_index_ivf(index)  # faiss's stubs lack search_preassigned_c
        self.num_items = int(index.ntotal)
        self.nlist = int(self._ivf.nlist)
        self.nprobe = int(self._ivf.nprobe)
        self.exact_max = exact_max
        self.ids_max = ids_max
        self.probe_budget = probe_budget
        self.large_exclude = large_exclude
        self.exclude_nprobe = exclude_nprobe
        self.states = StateCache(cache_bytes)
        self._layout: tuple[np.ndarray, np.ndarray] | None = None
        self._layout_lock = threading.Lock()

    def warm(self) -> None:
        """Reads the index's layout now (about 10 ms at a million movies), so the first filtered call on a
        version does not pay it."""
        self._index_layout()

    def handles(self, exclude: np.ndarray, subset: Subset | None) -> bool:
        """Whether a call belongs here; the rest keeps the backend's over-fetching path."""
        return subset is not None or exclude.size > self.large_exclude

    def top_k(self, query: np.ndarray, k: int, exclude: np.ndarray, subset: Subset | None,
              item_norms: np.ndarray | None = None) -> Answer:
        """(indices, scores) of the min(k, eligible) best movies in ``subset`` (None: all) and not in
        ``exclude``. Scores are exact inner products, divided by ``item_norms`` when given (cosine
        order, for similar())."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        if k <= 0:
            return _NO_INDICES, _NO_SCORES
        if subset is None:
            return self._excluding(query, k, exclude, item_norms)
        if subset.key is not None:
            state = self.state_of(subset)
            if state.matrix is not None:
                return self._exact(query, k, state.passing, exclude, item_norms, state.matrix)
            return self._probing(query, k, exclude, subset, state, item_norms)
        if subset.size <= self.ids_max:
            return self._exact(query, k, subset.passing, exclude, item_norms)
        return self._probing(query, k, exclude, subset, self._probe_state(subset), item_norms)

    # ---------------------------------------------------------------- per-filter state
    def state_of(self, subset: Subset) -> FilterState:
        """The keyed subset's state, from the cache or built (and cached when it fits)."""
        state = self.states.get(subset.key)
        if state is None:
            if subset.size <= self.exact_max:
                state = FilterState(subset.passing, matrix=self._vectors(subset.passing))
            else:
                state = self._probe_state(subset)
            self.states.put(subset.key, state)
        return state

    def _probe_state(self, subset: Subset) -> FilterState:
        bitmap = np.packbits(subset.mask, bitorder="little")
        return FilterState(subset.passing, bitmap=bitmap, list_counts=self._list_counts(subset.passing))

    def _list_counts(self, indices: np.ndarray) -> np.ndarray:
        return np.bincount(self._item_lists()[indices], minlength=self.nlist)

    def _centroids(self) -> np.ndarray:
        return self._index_layout()[0]

    def _item_lists(self) -> np.ndarray:
        return self._index_layout()[1]

    def _index_layout(self) -> tuple[np.ndarray, np.ndarray]:
        """(centroids [nlist, d], inverted list of each movie [n]): read from the index once."""
        layout = self._layout
        if layout is None:
            with self._layout_lock:
                if self._layout is None:
                    self._layout = (self._ivf.quantizer.reconstruct_n(0, self.nlist), self._read_item_lists())
                layout = self._layout
        return layout

    def _read_item_lists(self) -> np.ndarray:
        lists = np.zeros(self.num_items, dtype=np.int32)
        invlists = self._ivf.invlists
        for list_no in range(self.nlist):
            size = invlists.list_size(list_no)
            if size:
                lists[faiss.rev_swig_ptr(invlists.get_ids(list_no), size)] = list_no
        return lists

    def _vectors(self, indices: np.ndarray) -> np.ndarray:
        if not indices.size:
            return np.zeros((0, self._index.d), dtype=np.float32)
        return self._index.reconstruct_batch(np.asarray(indices, dtype=np.int64))

    # ---------------------------------------------------------------- exact paths
    def _exact(self, query: np.ndarray, k: int, passing: np.ndarray, exclude: np.ndarray,
               item_norms: np.ndarray | None, matrix: np.ndarray | None = None) -> Answer:
        """Exact over ``passing`` (ascending, so position order is index order for the tie rule):
        scores the cached ``matrix``, masking the excluded, or gathers the not-excluded vectors."""
        dropped = positions_in(passing, exclude)
        if matrix is None:
            passing = np.delete(passing, dropped) if dropped.size else passing
            scores = self._vectors(passing) @ query
        else:
            scores = matrix @ query
            scores[dropped] = -np.inf
        if item_norms is not None:
            scores = scores / item_norms[passing]
        best = top_k_indices(scores, k)
        return passing[best], scores[best]

    def _exact_over_eligible(self, query: np.ndarray, k: int, eligible: np.ndarray,
                             item_norms: np.ndarray | None) -> Answer:
        return self._exact(query, k, np.sort(eligible), _NO_INDICES, item_norms)

    # ---------------------------------------------------------------- IVF paths
    def _probing(self, query: np.ndarray, k: int, exclude: np.ndarray, subset: Subset, state: FilterState,
                 item_norms: np.ndarray | None) -> Answer:
        """IVF over the subset's bitmap (the excluded bits cleared), probing lists by centroid score
        until they hold ``probe_budget`` eligible movies (doubled on each widening)."""
        assert state.bitmap is not None and state.list_counts is not None
        bitmap, counts = state.bitmap, state.list_counts
        excluded = exclude[subset.mask[exclude]] if exclude.size else exclude
        if excluded.size:
            bitmap = bitmap & ~bitmap_of(excluded, self.num_items)
            counts = counts - self._list_counts(excluded)
        selector = faiss.IDSelectorBitmap(self.num_items, faiss.swig_ptr(bitmap))
        centroid_scores = self._centroids() @ query
        live = np.flatnonzero(counts)

        def search(fetch: int, widen: int) -> tuple[np.ndarray, np.ndarray, bool]:
            budget = max(self.probe_budget * widen, fetch)
            lists, exhausted = lists_holding(budget, centroid_scores, counts, live)
            labels, scores = self._search_lists(query, fetch, lists, centroid_scores[lists], selector)
            return labels, scores, exhausted

        def eligible() -> np.ndarray:
            return np.setdiff1d(subset.passing, excluded, assume_unique=True)

        return self._best_found(query, k, int(counts.sum()), search, eligible, item_norms)

    def _search_lists(self, query: np.ndarray, fetch: int, lists: np.ndarray, list_scores: np.ndarray,
                      selector: Any) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParametersIVF()
        params.nprobe = int(lists.size)
        params.sel = selector
        assign = np.ascontiguousarray(lists.reshape(1, -1), dtype=np.int64)
        coarse = np.ascontiguousarray(list_scores.reshape(1, -1), dtype=np.float32)
        distances = np.empty((1, fetch), dtype=np.float32)
        labels = np.empty((1, fetch), dtype=np.int64)
        x = query.reshape(1, -1)
        self._ivf.search_preassigned_c(1, faiss.swig_ptr(x), fetch, faiss.swig_ptr(assign), faiss.swig_ptr(coarse),
                                       faiss.swig_ptr(distances), faiss.swig_ptr(labels), False, params)
        return labels[0], distances[0]

    def _excluding(self, query: np.ndarray, k: int, exclude: np.ndarray, item_norms: np.ndarray | None) -> Answer:
        """No subset: the whole index, the excluded movies refused by IDSelectorNot(IDSelectorBitmap)
        inside the search, at least ``exclude_nprobe`` lists (doubled on each widening)."""
        bitmap = bitmap_of(exclude, self.num_items)
        excluded = faiss.IDSelectorBitmap(self.num_items, faiss.swig_ptr(bitmap))
        selector = faiss.IDSelectorNot(excluded)
        first_nprobe = min(self.nlist, max(self.nprobe, self.exclude_nprobe))
        x = query.reshape(1, -1)

        def search(fetch: int, widen: int) -> tuple[np.ndarray, np.ndarray, bool]:
            params = faiss.SearchParametersIVF()
            params.nprobe = min(self.nlist, first_nprobe * widen)
            params.sel = selector
            scores, labels = self._index.search(x, fetch, params=params)
            return labels[0], scores[0], params.nprobe >= self.nlist

        def eligible() -> np.ndarray:
            keep = np.ones(self.num_items, dtype=bool)
            keep[exclude] = False
            return np.flatnonzero(keep)

        return self._best_found(query, k, self.num_items - exclude.size, search, eligible, item_norms)

    def _best_found(self, query: np.ndarray, k: int, total: int, search: Search,
                    eligible: Callable[[], np.ndarray], item_norms: np.ndarray | None) -> Answer:
        """The best k of ``search``'s candidates, rescored exactly, ties to the lower index.

        Fetches k + 1 so that a tie across the k-th place is seen and fetched wider, as the
        unfiltered path does (a cosine call fetches what a probe budget holds, see COSINE_SHORTLIST).
        A search short of min(k, total) while the eligible movies are not exhausted is widened; one
        that stays short even then falls back to an exact scan of ``eligible()``.
        """
        need = min(k, total)
        if need <= 0:
            return _NO_INDICES, _NO_SCORES
        fetch = min(self.num_items, max(k + 1, self.probe_budget if item_norms is not None else 0))
        widen = 1
        while True:
            labels, approximate, exhausted = search(fetch, widen)
            found = labels >= 0
            if np.count_nonzero(found) < need:
                if exhausted:
                    return self._exact_over_eligible(query, k, eligible(), item_norms)
                widen *= 2
                continue
            if item_norms is not None:
                return self._by_cosine(query, k, labels[found], approximate[found], item_norms)
            indices, scores = _ranked(labels[found], self._vectors(labels[found]) @ query)
            if indices.size < fetch or scores[k] < scores[k - 1] or fetch >= total:
                return indices[:k], scores[:k]
            fetch = min(self.num_items, fetch * 4)

    def _by_cosine(self, query: np.ndarray, k: int, candidates: np.ndarray, inner_products: np.ndarray,
                   item_norms: np.ndarray) -> Answer:
        """The k best candidates by inner product over norm: a shortlist from faiss's own products,
        then exact products of the shortlist."""
        shortlist = candidates[top_k_indices(inner_products / item_norms[candidates], COSINE_SHORTLIST * (k + 1))]
        indices, scores = _ranked(shortlist, (self._vectors(shortlist) @ query) / item_norms[shortlist])
        return indices[:k], scores[:k]
