"""The filter benchmark's own idea of what is right: metadata for the synthetic catalogue (genres
that follow its clusters, eras per cluster), and an oracle that answers every filtered call by brute
force over the artifact with this module's own filter code, never the server's
(``benchmarks/filters.py`` runs the services and compares).
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks.filter_load import random_ids
from tests.artifacts import item_clusters as replayed_clusters

GENRE_NAMES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
               "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western", "Biography")
PRIMARY_P, OTHER_P = 0.85, 0.004
ERA_SPREAD_YEARS, UNKNOWN_YEAR_SHARE = 6.0, 0.03
PROBLEMS = ("fails_filter", "seen", "hidden", "repeated", "not_min_k_eligible", "eligible_mismatch",
            "unknown_id", "errors")


# ----------------------------------------------------------------------------
# The synthetic catalogue's metadata
# ----------------------------------------------------------------------------

def item_clusters(artifact, seed: int) -> np.ndarray:
    """Each movie's cluster in ``clustered_artifact(seed=seed)`` (tests.artifacts replays its draws), checked
    against the vectors; a k-means assignment if they do not match (the artifact came from elsewhere)."""
    items, dim = artifact.item_vectors.shape
    assigned = replayed_clusters(items, dim, seed)
    clusters = int(assigned.max()) + 1
    sample = np.arange(0, items, max(1, items // 20_000))
    vectors = np.asarray(artifact.item_vectors[sample], dtype=np.float64)
    sums = np.zeros((clusters, dim))
    np.add.at(sums, assigned[sample], vectors)
    centres = sums / np.maximum(np.bincount(assigned[sample], minlength=clusters), 1)[:, None]
    offset = np.linalg.norm(vectors - centres[assigned[sample]], axis=1)
    if float(np.median(offset)) < 0.9:  # the noise is 0.6 in norm; centres are ~1.4 apart
        return assigned
    import faiss

    kmeans = faiss.Kmeans(dim, clusters, niter=10, seed=seed, verbose=False)
    kmeans.train(np.ascontiguousarray(artifact.item_vectors[::max(1, items // (clusters * 40))]))
    return kmeans.index.search(artifact.item_vectors, 1)[1][:, 0]


def synthetic_metadata(cluster: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(genre bits uint64, years int16) that follow the clusters (see the module docstring)."""
    rng = np.random.default_rng(seed + 101)
    clusters, items, genres = int(cluster.max()) + 1, cluster.size, len(GENRE_NAMES)
    primary = np.zeros((clusters, genres), dtype=bool)
    for c in range(clusters):
        primary[c, rng.choice(genres, size=int(rng.integers(1, 4)), replace=False)] = True
    bits = np.zeros(items, dtype=np.uint64)
    for g in range(genres):
        draw = rng.random(items)
        has = np.where(primary[cluster, g], draw < PRIMARY_P, draw < OTHER_P)
        bits[has] |= np.uint64(1 << g)
    era = rng.uniform(1935, 2018, size=clusters)
    years = np.clip(np.rint(era[cluster] + rng.normal(0, ERA_SPREAD_YEARS, size=items)), 1900, 2024).astype(np.int16)
    years[rng.random(items) < UNKNOWN_YEAR_SHARE] = 0
    return bits, years


def genre_share(bits: np.ndarray, names: tuple[str, ...], wanted: tuple[str, ...]) -> float:
    mask = np.uint64(sum(1 << names.index(n) for n in wanted))
    return float(np.count_nonzero((bits & mask) == mask)) / bits.size


def closest_genre(bits: np.ndarray, share: float) -> str:
    return min(GENRE_NAMES, key=lambda g: abs(genre_share(bits, GENRE_NAMES, (g,)) - share))


def closest_pair(bits: np.ndarray, share: float) -> tuple[str, str]:
    pairs = [(a, b) for i, a in enumerate(GENRE_NAMES) for b in GENRE_NAMES[i + 1:]]
    return min(pairs, key=lambda p: abs(genre_share(bits, GENRE_NAMES, p) - share))


def year_range(years: np.ndarray, share: float) -> tuple[int, int]:
    """A range of recent years passing about ``share`` of the movies (unknown years never pass)."""
    counts = np.bincount(years.astype(np.int64), minlength=2100)
    counts[0] = 0
    total = years.size
    high = int(np.flatnonzero(counts).max())
    for low in range(high, 0, -1):
        if counts[low:high + 1].sum() >= share * total:
            # then trim the newest years the share does not need (a few stragglers past the last era)
            while high > low and counts[low:high].sum() >= share * total:
                high -= 1
            return low, high
    return 1, high


# ----------------------------------------------------------------------------
# The benchmark's own view of a version: vectors, seen movies, genres, years
# ----------------------------------------------------------------------------

class Oracle:
    """Answers checked against the version's own arrays with this script's code (never the server's)."""

    def __init__(self, art, genre_names: tuple[str, ...], bits: np.ndarray, years: np.ndarray):
        self.art, self.genre_names, self.bits, self.years = art, tuple(genre_names), bits, years
        self.order = np.argsort(art.movie_ids, kind="stable")
        self.sorted_ids = art.movie_ids[self.order]
        self.user_index = {str(u): i for i, u in enumerate(art.user_ids.tolist())}
        self.num_items = int(art.movie_ids.size)
        self._masks: dict[str, tuple[np.ndarray | None, int]] = {}
        self._subs: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}

    def indices(self, ids) -> np.ndarray:
        """Catalogue positions of ``ids``; -1 for an id the version does not know."""
        ids = np.asarray(ids, dtype=np.int64)
        if not ids.size:
            return np.zeros(0, dtype=np.int64)
        position = np.minimum(np.searchsorted(self.sorted_ids, ids), self.sorted_ids.size - 1)
        found = self.sorted_ids[position] == ids
        return np.where(found, self.order[position], -1)

    def _genre_bits(self, names) -> np.uint64:
        return np.uint64(sum(1 << self.genre_names.index(n) for n in names))

    def static_mask(self, spec: dict | None) -> tuple[np.ndarray | None, int]:
        """(bool [I] of the movies passing the spec's genre and year conditions or None when it has none,
        how many pass)."""
        key = json.dumps({k: v for k, v in (spec or {}).items() if k != "random"}, sort_keys=True)
        if key not in self._masks:
            spec = spec or {}
            mask = np.ones(self.num_items, dtype=bool)
            conditions = False
            if spec.get("genres_any"):
                mask &= (self.bits & self._genre_bits(spec["genres_any"])) != 0
                conditions = True
            if spec.get("genres_all"):
                wanted = self._genre_bits(spec["genres_all"])
                mask &= (self.bits & wanted) == wanted
                conditions = True
            if spec.get("exclude_genres"):
                mask &= (self.bits & self._genre_bits(spec["exclude_genres"])) == 0
                conditions = True
            low, high = int(spec.get("min_year", 0)), int(spec.get("max_year", 0))
            if low or high:
                mask &= self.years > 0
                if low:
                    mask &= self.years >= low
                if high:
                    mask &= self.years <= high
                conditions = True
            for field in ("exclude_movie_ids", "only_movie_ids"):  # fixed id lists (random ones come per call)
                if spec.get(field):
                    listed = np.zeros(self.num_items, dtype=bool)
                    found = self.indices(spec[field])
                    listed[found[found >= 0]] = True
                    mask &= ~listed if field == "exclude_movie_ids" else listed
                    conditions = True
            self._masks[key] = (mask, int(mask.sum())) if conditions else (None, self.num_items)
        return self._masks[key]

    def random_lists(self, spec: dict | None, seed: int, call: int) -> tuple[np.ndarray | None, np.ndarray]:
        """(the call's only_movie_ids as positions or None, its random exclude_movie_ids as positions)."""
        random = (spec or {}).get("random")
        if not random:
            return None, np.zeros(0, dtype=np.int64)
        listed = self.indices(random_ids(self.art.movie_ids, int(random["count"]), seed, call))
        listed = np.unique(listed[listed >= 0])
        if random["field"] == "only_movie_ids":
            return listed, np.zeros(0, dtype=np.int64)
        return None, listed

    def seen(self, user: int | None) -> np.ndarray:
        if user is None:
            return np.zeros(0, dtype=np.int64)
        return self.art.seen_indices[self.art.seen_indptr[user]:self.art.seen_indptr[user + 1]].astype(np.int64)

    def check(self, spec: dict | None, seed: int, record: dict, user_id: str, exclude_seen: bool | None, k: int,
              hidden: np.ndarray) -> tuple[dict[str, int], dict]:
        """Problems found in one answer (counts by kind) and what the recall needs to know about it."""
        problems = dict.fromkeys(PROBLEMS, 0)
        if record.get("code", 0) != 0:
            problems["errors"] = 1
            return problems, {}
        mask, passing = self.static_mask(spec)
        only, excluded = self.random_lists(spec, seed, record["i"])
        user = self.user_index.get(user_id)
        seen = self.seen(user) if exclude_seen is not False else np.zeros(0, dtype=np.int64)
        removed = np.unique(np.concatenate([seen, excluded, hidden]))
        if only is not None:
            candidates = only if mask is None else only[mask[only]]
            candidates = np.setdiff1d(candidates, removed, assume_unique=True)
            eligible = int(candidates.size)
        else:
            candidates = None
            eligible = passing - (int(removed.size) if mask is None else int(np.count_nonzero(mask[removed])))
        served = self.indices(record["ids"])
        if (served < 0).any():
            problems["unknown_id"] = 1
            served = served[served >= 0]
        fails = (mask is not None and not mask[served].all()) or np.isin(served, excluded).any() or (
            only is not None and not np.isin(served, only).all())
        problems["fails_filter"] = int(bool(fails))
        problems["seen"] = int(bool(np.isin(served, seen).any()))
        problems["hidden"] = int(bool(np.isin(served, hidden).any()))
        problems["repeated"] = int(np.unique(served).size != served.size)
        problems["not_min_k_eligible"] = int(len(record["ids"]) != min(k, eligible))
        problems["eligible_mismatch"] = int(record.get("eligible", -1) != eligible)
        return problems, {"user": user, "served": served, "removed": removed, "candidates": candidates,
                          "eligible": eligible}

    def passing_subset(self, spec: dict | None) -> tuple[np.ndarray | None, np.ndarray]:
        """(positions passing the spec's fixed conditions or None for all, their vectors), cached per spec."""
        key = json.dumps({k: v for k, v in (spec or {}).items() if k != "random"}, sort_keys=True)
        if key not in self._subs:
            mask, _ = self.static_mask(spec)
            if mask is None:
                self._subs[key] = (None, self.art.item_vectors)
            else:
                passing = np.flatnonzero(mask)
                self._subs[key] = (passing, np.ascontiguousarray(self.art.item_vectors[passing]))
        return self._subs[key]

    def recalls(self, spec: dict | None, checked: list[dict], k: int, block: int = 32) -> list[float]:
        """recall@k of each checked answer (of a known user) against the exact top min(k, eligible)."""
        out: list[float] = []
        passing, vectors = self.passing_subset(spec)
        known = [c for c in checked if c["user"] is not None and min(k, c["eligible"]) > 0]
        listed = [c for c in known if c["candidates"] is not None]
        for c in listed:  # a caller's id list: score exactly those
            candidates = c["candidates"]
            scores = self.art.item_vectors[candidates] @ self.art.user_vectors[c["user"]]
            out.append(_recall(candidates[_top(scores, min(k, c["eligible"]))], c["served"]))
        rest = [c for c in known if c["candidates"] is None]
        for start in range(0, len(rest), block):
            part = rest[start:start + block]
            scores = self.art.user_vectors[[c["user"] for c in part]] @ vectors.T
            for row, c in enumerate(part):
                removed = c["removed"]
                if passing is None:
                    scores[row, removed] = -np.inf
                    positions = None
                else:
                    where = np.minimum(np.searchsorted(passing, removed), passing.size - 1)
                    scores[row, where[passing[where] == removed]] = -np.inf
                    positions = passing
                top = _top(scores[row], min(k, c["eligible"]))
                out.append(_recall(top if positions is None else positions[top], c["served"]))
        return out


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    if k >= scores.size:
        return np.arange(scores.size)
    return np.argpartition(-scores, k - 1)[:k]


def _recall(truth: np.ndarray, served: np.ndarray) -> float:
    return float(np.intersect1d(truth, served).size) / max(1, truth.size)


# ----------------------------------------------------------------------------
# Running the load generator and reading its calls
