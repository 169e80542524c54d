"""Which movies an answer may hold: a request's :class:`MovieFilter`, and what it
means for one served version, a :class:`Subset` plus exclusions.

The servicer parses a request's ``Filter`` once into a MovieFilter (limits
checked, ids as arrays), with no version in sight. :func:`resolve` then turns
it into what retrieval needs for the version that answers:

* a :class:`Subset`, the movies passing the "keep" conditions (only these ids,
  genres any/all/none, years), or None when there are none;
* ``exclude``, the indices of ``exclude_movie_ids``, which retrieval merges
  with the user's seen movies and the operators' hidden ones;
* the ids the version does not know, reported back and otherwise ignored.

Both :class:`~recommender_service.top_k.TopK` backends take that Subset and
that exclusion inside retrieval, never as a pass over an answer, which is why
an answer holds exactly k whenever k movies pass.

Genre and year conditions are the same for every user who asks for a genre
row, so their Subsets are kept per version (:class:`SubsetCache`, a few dozen
distinct filters, bounded in bytes), and a Subset made from them carries a
``key`` by which a backend may keep its own per-filter state (the faiss
planner keeps bitmaps, per-list counts and small contiguous sub-matrices).
A Subset built from ``only_movie_ids`` is the caller's own list, made per
call, and has no key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from movierec_common.movie_metadata import MovieMetadata
from recommender_service.errors import FilterNeedsMetadata, InvalidRequest
from recommender_service.sessions import first_occurrences

MAX_EXCLUDE_MOVIE_IDS = 10_000
MAX_ONLY_MOVIE_IDS = 100_000
MAX_GENRE_NAMES = 64     # a version has at most 64 genres (movie_metadata.MAX_GENRES)
MAX_YEAR = 9999
# Kept Subsets per version: a genre or year row is shared by every caller, so a few dozen distinct
# filters cover a product's rows; each costs a bool per movie plus its passing indices (at most 9 MB
# at a million movies), bounded here in bytes.
SUBSET_CACHE_BYTES = 96 * 1024 * 1024

_NO_IDS = np.zeros(0, dtype=np.int64)


def distinct_sorted(values: np.ndarray) -> np.ndarray:
    """The distinct values, ascending. A sort and a neighbour compare: numpy's np.unique hashes instead,
    which measured 0.6 ms for 10,000 ids against 0.03 ms for this, on the request path of every call
    with an id list."""
    if values.size < 2:
        return np.sort(values)
    ordered = np.sort(values)
    keep = np.empty(ordered.size, dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def sorted_union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The distinct values of both, ascending (np.union1d's answer, without its hashing; see distinct_sorted)."""
    if not b.size:
        return a
    if not a.size:
        return b
    return distinct_sorted(np.concatenate((a, b)))


def _ids(values: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1) if len(values) else _NO_IDS


@dataclass(frozen=True, eq=False)
class MovieFilter:
    """A request's conditions on the movies it may be answered with; they combine with AND.

    Built with :meth:`checked`, which raises InvalidRequest, with the numbers, for a list over its
    limit or a bad year range. Genre names are checked against the version that answers
    (:func:`resolve`), since only it knows its genres.
    """

    exclude_movie_ids: np.ndarray = field(default_factory=lambda: _NO_IDS)  # int64
    only_movie_ids: np.ndarray = field(default_factory=lambda: _NO_IDS)     # int64; empty = no condition
    genres_any: tuple[str, ...] = ()
    genres_all: tuple[str, ...] = ()
    exclude_genres: tuple[str, ...] = ()
    min_year: int = 0  # 0 = no bound
    max_year: int = 0

    @classmethod
    def checked(cls, exclude_movie_ids: Sequence[int] | np.ndarray = (),
                only_movie_ids: Sequence[int] | np.ndarray = (),
                genres_any: Sequence[str] = (), genres_all: Sequence[str] = (), exclude_genres: Sequence[str] = (),
                min_year: int = 0, max_year: int = 0) -> MovieFilter:
        if len(exclude_movie_ids) > MAX_EXCLUDE_MOVIE_IDS:
            raise InvalidRequest(f"filter.exclude_movie_ids holds {len(exclude_movie_ids):,} ids; at most "
                                 f"{MAX_EXCLUDE_MOVIE_IDS:,} are accepted")
        if len(only_movie_ids) > MAX_ONLY_MOVIE_IDS:
            raise InvalidRequest(f"filter.only_movie_ids holds {len(only_movie_ids):,} ids; at most "
                                 f"{MAX_ONLY_MOVIE_IDS:,} are accepted")
        for name, genres in (("genres_any", genres_any), ("genres_all", genres_all),
                             ("exclude_genres", exclude_genres)):
            if len(genres) > MAX_GENRE_NAMES:
                raise InvalidRequest(f"filter.{name} holds {len(genres)} names; at most {MAX_GENRE_NAMES}")
        for name, year in (("min_year", min_year), ("max_year", max_year)):
            if not 0 <= year <= MAX_YEAR:
                raise InvalidRequest(f"filter.{name} is {year}; a year is between 1 and {MAX_YEAR} (0 = no bound)")
        if min_year and max_year and min_year > max_year:
            raise InvalidRequest(f"filter.min_year {min_year} is after filter.max_year {max_year}: the range is "
                                 f"inverted; swap them")
        return cls(_ids(exclude_movie_ids), _ids(only_movie_ids), tuple(genres_any), tuple(genres_all),
                   tuple(exclude_genres), int(min_year), int(max_year))

    @property
    def is_empty(self) -> bool:
        return not (self.exclude_movie_ids.size or self.only_movie_ids.size or self.needs_metadata)

    @property
    def needs_metadata(self) -> bool:
        """Whether a condition tests genres or years (a version without metadata cannot answer it)."""
        return bool(self.genres_any or self.genres_all or self.exclude_genres or self.min_year or self.max_year)

    @cached_property
    def metadata_key(self) -> Hashable:
        """The genre and year conditions, as a key equal for every request asking the same."""
        return (frozenset(self.genres_any), frozenset(self.genres_all), frozenset(self.exclude_genres),
                self.min_year, self.max_year)


NO_FILTER = MovieFilter()


class Subset:
    """The movies an answer may be drawn from, before exclusions: ascending indices and a mask.

    ``key`` is equal for Subsets of the same genre and year conditions on the same version, so a
    backend may keep per-filter state under it; None for one made from a caller's id list.
    """

    __slots__ = ("passing", "num_items", "key", "_mask")

    def __init__(self, passing: np.ndarray, num_items: int, key: Hashable | None = None,
                 mask: np.ndarray | None = None):
        self.passing = passing        # int64, ascending, distinct
        self.num_items = num_items
        self.key = key
        self._mask = mask

    @property
    def mask(self) -> np.ndarray:
        """bool [num_items], True for the passing movies (built on first use for an id list)."""
        if self._mask is None:
            mask = np.zeros(self.num_items, dtype=bool)
            mask[self.passing] = True
            self._mask = mask  # a racing thread builds the same array
        return self._mask

    @property
    def size(self) -> int:
        return int(self.passing.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.passing.nbytes) + (int(self._mask.nbytes) if self._mask is not None else 0)

    def contains(self, indices: np.ndarray) -> np.ndarray:
        """bool per entry of ``indices``: in the subset. A gather from the mask when there is one; for a
        caller's id list (no mask yet) binary searches in ``passing`` instead of building a mask of the
        whole catalogue per call (1 MB at a million movies) to test a few hundred movies."""
        if self._mask is not None or not self.passing.size:
            return self.mask[indices]
        position = np.minimum(np.searchsorted(self.passing, indices), self.passing.size - 1)
        return self.passing[position] == indices

    def count_among(self, indices: np.ndarray) -> int:
        """How many of ``indices`` (distinct) are in the subset."""
        return int(np.count_nonzero(self.contains(indices))) if indices.size else 0


class SubsetCache:
    """Subsets of genre and year conditions for one version, least recently used out first,
    at most ``budget_bytes`` of them. The lock is held for dict operations only."""

    def __init__(self, budget_bytes: int = SUBSET_CACHE_BYTES):
        self.budget_bytes = budget_bytes
        self.nbytes = 0
        self._entries: OrderedDict[Hashable, Subset] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Subset | None:
        with self._lock:
            subset = self._entries.get(key)
            if subset is not None:
                self._entries.move_to_end(key)
            return subset

    def put(self, subset: Subset) -> None:
        if subset.nbytes > self.budget_bytes:
            return
        with self._lock:
            if subset.key in self._entries:
                return
            while self.nbytes + subset.nbytes > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.nbytes -= evicted.nbytes
            self._entries[subset.key] = subset
            self.nbytes += subset.nbytes


@dataclass(frozen=True, eq=False)
class ResolvedFilter:
    """A MovieFilter as one version reads it: what retrieval takes."""

    subset: Subset | None          # None: every movie passes the keep conditions
    exclude: np.ndarray            # int64 indices of exclude_movie_ids, ascending, distinct
    unknown_movie_ids: list[int]   # the filter's ids this version does not know, in request order, each once

    @property
    def is_empty(self) -> bool:
        return self.subset is None and not self.exclude.size


NOTHING_RESOLVED = ResolvedFilter(None, _NO_IDS, [])


def _shown(name: str, limit: int = 100) -> str:
    """A caller's genre name as an error message quotes it: cut, so a 10 KB name cannot make the status
    message too large for the wire."""
    return repr(name[:limit]) + ("..." if len(name) > limit else "")


def _metadata_subset(movie_filter: MovieFilter, movies: MovieMetadata, cache: SubsetCache | None) -> Subset:
    key = movie_filter.metadata_key
    subset = cache.get(key) if cache is not None else None
    if subset is not None:
        return subset
    bits: list[int] = []
    for name, genres in (("genres_any", movie_filter.genres_any), ("genres_all", movie_filter.genres_all),
                         ("exclude_genres", movie_filter.exclude_genres)):
        try:
            bits.append(movies.bits_of(genres))
        except KeyError as missing:
            known = ", ".join(movies.genre_names) or "none"
            raise InvalidRequest(f"filter.{name}: this model version has no genre {_shown(missing.args[0])}; its "
                                 f"genres are: {known}") from None
    mask = movies.matching(bits[0], bits[1], bits[2], movie_filter.min_year, movie_filter.max_year)
    subset = Subset(np.flatnonzero(mask), len(movies), key, mask)
    if cache is not None:
        cache.put(subset)
    return subset


def resolve(movie_filter: MovieFilter, movies: MovieMetadata, index_of_ids: Callable[[np.ndarray], np.ndarray],
                cache: SubsetCache | None = None) -> ResolvedFilter:
    """``movie_filter`` as the version with ``movies`` (its metadata) and ``index_of_ids`` (movie ids to
    indices, -1 where unknown) reads it.

    Raises FilterNeedsMetadata for a genre or year condition on a version without metadata, and
    InvalidRequest, naming the version's genres, for a genre it does not have.
    """
    if movie_filter is NO_FILTER or movie_filter.is_empty:
        return NOTHING_RESOLVED
    if movie_filter.needs_metadata and not movies.present:
        raise FilterNeedsMetadata()
    unknown = [_NO_IDS, _NO_IDS]  # the ids of each list the version does not know
    exclude = _NO_IDS
    if movie_filter.exclude_movie_ids.size:
        indices = index_of_ids(movie_filter.exclude_movie_ids)
        unknown[0] = movie_filter.exclude_movie_ids[indices < 0]
        exclude = distinct_sorted(indices[indices >= 0])
    subset = _metadata_subset(movie_filter, movies, cache) if movie_filter.needs_metadata else None
    if movie_filter.only_movie_ids.size:
        indices = index_of_ids(movie_filter.only_movie_ids)
        unknown[1] = movie_filter.only_movie_ids[indices < 0]
        only = distinct_sorted(indices[indices >= 0])
        if subset is not None:
            only = only[subset.mask[only]]
        subset = Subset(only, len(movies))
    # exclude_movie_ids' unknown ids first, then only_movie_ids', each once, in request order
    return ResolvedFilter(subset, exclude, first_occurrences(np.concatenate(unknown)))
