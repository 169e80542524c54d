"""``movierec-synth``: synthetic ratings in MovieLens 25M's format, of any size.

Scale work (loading 25 million ratings, training on million-movie catalogues,
serving them) needs datasets far larger than MovieLens 100K that anyone can
regenerate offline and share, which MovieLens's licence does not allow. The
data imitates what matters to a recommender:

* popularity follows a power law (Zipf): a few movies collect most ratings
  and, in a large catalogue, most movies collect none;
* tastes have structure a model can learn: every movie belongs to one of
  ``clusters`` taste clusters and every user has a Dirichlet-drawn mixture
  over them. A user's movies are drawn without repetition from weights
  taste x popularity, plus a ``mainstream`` share drawn by popularity alone,
  so a model that finds the clusters beats "most popular" clearly;
* a second, clustered long-tail shape (``clusters_per_user``,
  ``popularity_within_clusters``, ``zipf_exponent``) imitates catalogues
  where taste, not global popularity, decides: equal-size clusters, Zipf
  popularity ranked inside each cluster (every cluster has its own hits and
  its own tail), and each user's taste split evenly over a few random
  clusters. There the most popular movies of the user's own clusters are a
  strong answer and global popularity a useless one, which the default shape
  (where a few clusters and the global hits dominate) cannot show;
* activity is heavy-tailed (every user has at least 2 ratings, a few have
  thousands), and each user's timestamps increase: rows are sorted by user,
  then time, so a last-rating-per-user holdout holds out a random pick.

It is vectorised numpy (no loop per rating) and deterministic: the same
arguments give byte-identical files (with the same numpy). Drawing with repetition and discarding
repeats is cheap but slow to finish for users who rate a large part of the
catalogue, so after a few rounds the rest is drawn exactly with the
Gumbel-top-k trick, which samples without replacement in one step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# pyarrow is imported by the writers only, so `movierec`, which offers these
# options as `movierec synth`, starts without it.

DEFAULT_CLUSTERS = 24
DEFAULT_MAINSTREAM = 0.1
ZIPF_EXPONENT = 1.0
ZIPF_OFFSET = 3.0            # flattens the very top so the first movie does not take everything
TASTE_CONCENTRATION = 0.08   # mean Dirichlet parameter: most users lean on 1-2 clusters
ACTIVITY_SIGMA = 1.1         # log-normal spread of how much users rate
SAMPLING_ROUNDS = 6
MIN_ACCEPTANCE = 0.05        # below this share of new draws, a user is finished exactly
GUMBEL_BLOCK = 1 << 24       # users x movies scored at once by the exact sampler
FIRST_TIMESTAMP = 789_652_009  # MovieLens 25M's first rating (January 1995)
TIMESTAMP_SPAN = 24 * 365 * 86_400
RATINGS_HEADER = b"userId,movieId,rating,timestamp\n"
MOVIES_HEADER = b"movieId,title,genres\n"
_WRITE_CHUNK = 1 << 22

_ADJECTIVES = ("Silent", "Midnight", "Broken", "Golden", "Last", "Hidden", "Wild", "Dark", "Little", "Lost",
               "Crimson", "Frozen", "Electric", "Secret", "Distant", "Fallen", "Endless", "Bitter", "Brave",
               "Café", "Quiet", "Burning", "Northern", "Iron")
_NOUNS = ("River", "Garden", "Empire", "Summer", "Stranger", "Road", "Kingdom", "Promise", "Harbor", "Mirror",
          "Station", "Letter", "Island", "Winter", "Dream", "Machine", "Night", "Heart", "City", "Detective",
          "Storm", "Song", "Orchard", "Frontier")
_GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
           "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
_STARS = tuple(f"{half / 2:.1f}" for half in range(1, 11))  # "0.5" .. "5.0"


@dataclass(frozen=True)
class Synthetic:
    """A generated dataset, rows sorted by user then time."""

    user_ids: np.ndarray    # int32 per rating (1-based)
    movie_ids: np.ndarray   # int64 per rating
    stars: np.ndarray       # int8 per rating: half-stars, 1 = 0.5 .. 10 = 5.0
    timestamps: np.ndarray  # int64 per rating
    catalogue: np.ndarray   # int64 movie ids, all movies, ascending
    movie_cluster: np.ndarray  # int32 taste cluster of each catalogue movie
    seed: int               # titles and genres are drawn from it when written
    # int32 [users, clusters_per_user]: each user's true clusters in the clustered shape; None for the mixture.
    user_clusters: np.ndarray | None = None

    @property
    def ratings(self) -> np.ndarray:
        return self.stars.astype(np.float32) / 2


@dataclass(frozen=True)
class SynthFiles:
    ratings: Path
    movies: Path


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class _World:
    """Movie popularity and clusters, arranged for inverse-CDF sampling."""

    cluster: np.ndarray          # int32 per movie index
    weight: np.ndarray           # Zipf popularity weight per movie index
    global_cdf: np.ndarray       # over movie indices
    by_cluster: np.ndarray       # movie indices grouped by cluster
    cluster_cdf: np.ndarray      # k + cumulative share within cluster k, aligned with by_cluster
    cluster_sizes: np.ndarray


def _world(rng: np.random.Generator, movies: int, clusters: int, exponent: float = ZIPF_EXPONENT,
           within_clusters: bool = False) -> _World:
    if within_clusters:
        # Movie order[j] joins cluster j % clusters at popularity rank j // clusters: equal sizes (within one),
        # and each cluster's own Zipf curve, so every cluster has hits and a tail of its own.
        order = rng.permutation(movies)
        cluster = np.empty(movies, dtype=np.int32)
        cluster[order] = np.arange(movies) % clusters
        rank = np.empty(movies, dtype=np.int64)
        rank[order] = np.arange(movies) // clusters
        weight = (rank + ZIPF_OFFSET) ** -exponent
    else:
        cluster = rng.integers(0, clusters, size=movies).astype(np.int32)
        weight = (rng.permutation(movies) + ZIPF_OFFSET) ** -exponent
    by_cluster = np.argsort(cluster, kind="stable")
    sorted_cluster = cluster[by_cluster]
    sizes = np.bincount(cluster, minlength=clusters)
    totals = np.bincount(cluster, weights=weight, minlength=clusters)
    before = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
    running = np.cumsum(weight[by_cluster])
    cdf = sorted_cluster + (running - before[sorted_cluster]) / totals[sorted_cluster]
    ends = np.cumsum(sizes)[sizes > 0] - 1
    cdf[ends] = sorted_cluster[ends] + 1.0  # exact upper ends, so a draw never leaves its cluster
    global_cdf = np.cumsum(weight) / weight.sum()
    return _World(cluster, weight, global_cdf, by_cluster, cdf, sizes)


def _tastes(rng: np.random.Generator, users: int, world: _World) -> np.ndarray:
    """Each user's mixture over clusters (rows sum to 1, nothing on empty clusters)."""
    clusters = len(world.cluster_sizes)
    prior = (np.arange(clusters) + 1.0) ** -0.5  # some tastes are commoner than others
    alpha = TASTE_CONCENTRATION * clusters * prior / prior.sum()
    taste = rng.dirichlet(alpha, size=users) * (world.cluster_sizes > 0)
    totals = taste.sum(axis=1, keepdims=True)
    fallback = (world.cluster_sizes > 0) / max(1, int((world.cluster_sizes > 0).sum()))
    return np.where(totals > 0, taste / np.where(totals > 0, totals, 1.0), fallback)


def _split_tastes(rng: np.random.Generator, users: int, world: _World, per_user: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Each user's taste split evenly over ``per_user`` distinct non-empty clusters drawn uniformly.

    Returns the taste matrix (as :func:`_tastes`) and the chosen clusters [users, per_user].
    """
    nonempty = np.flatnonzero(world.cluster_sizes > 0)
    picks = rng.integers(0, len(nonempty), size=(users, per_user))
    while True:  # redraw the rows that repeat a cluster (rare unless per_user is near the cluster count)
        ordered = np.sort(picks, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if not repeated.any():
            break
        picks[repeated] = rng.integers(0, len(nonempty), size=(int(repeated.sum()), per_user))
    chosen = nonempty[picks].astype(np.int32)
    taste = np.zeros((users, len(world.cluster_sizes)))
    taste[np.arange(users)[:, None], chosen] = 1.0 / per_user
    return taste, chosen


def _activity(rng: np.random.Generator, users: int, movies: int, ratings: int) -> np.ndarray:
    """Ratings per user: at least 2, at most every movie, log-normal in between, summing to ``ratings``."""
    weights = rng.lognormal(0.0, ACTIVITY_SIGMA, size=users)
    counts = np.full(users, 2, dtype=np.int64)
    remaining = ratings - 2 * users
    while remaining > 0:
        open_ = counts < movies
        share = remaining * np.where(open_, weights, 0.0) / weights[open_].sum()
        add = np.floor(share).astype(np.int64)
        leftover = remaining - int(add.sum())
        add[np.argsort(-(share - add), kind="stable")[:leftover]] += 1  # largest remainders
        counts += add
        over = np.maximum(counts - movies, 0)
        counts -= over
        remaining = int(over.sum())
    return counts


def _draw(rng: np.random.Generator, world: _World, taste_cdf: np.ndarray, users: np.ndarray,
          mainstream: float) -> np.ndarray:
    """One movie index per entry of ``users``, with repetition."""
    clusters = len(world.cluster_sizes)
    picks = np.empty(len(users), dtype=np.int64)
    popular = rng.random(len(users)) < mainstream
    picks[popular] = np.minimum(np.searchsorted(world.global_cdf, rng.random(int(popular.sum())), side="right"),
                                len(world.global_cdf) - 1)
    tasteful = users[~popular]
    slot = np.searchsorted(taste_cdf, tasteful + rng.random(len(tasteful)), side="right")
    cluster = np.minimum(slot - tasteful * clusters, clusters - 1)
    position = np.searchsorted(world.cluster_cdf, cluster + rng.random(len(tasteful)), side="right")
    picks[~popular] = world.by_cluster[np.minimum(position, len(world.by_cluster) - 1)]
    return picks


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, start + length)`` for each pair, without a Python loop."""
    offsets = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum())) - np.repeat(offsets - starts, lengths)


def _exact_draws(rng: np.random.Generator, world: _World, taste: np.ndarray, mainstream: float,
                 users: np.ndarray, need: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """Pair keys of ``need`` more distinct movies per user, by Gumbel-top-k over the whole catalogue.

    Adding Gumbel noise to log-weights and keeping the k best is exactly
    drawing k times without replacement, in one vectorised step per block.
    """
    movies = len(world.cluster)
    within = world.weight / np.bincount(world.cluster, weights=world.weight)[world.cluster]
    popular = mainstream * world.weight / world.weight.sum()
    block = max(1, GUMBEL_BLOCK // movies)
    keys = []
    for start in range(0, len(users), block):
        rows, want = users[start:start + block], need[start:start + block]
        scores = np.log(popular + (1 - mainstream) * taste[rows][:, world.cluster] * within)
        scores += rng.gumbel(size=scores.shape)
        first = np.searchsorted(taken, rows * movies)
        held = np.searchsorted(taken, (rows + 1) * movies) - first
        row_of = np.repeat(np.arange(len(rows)), held)
        scores[row_of, taken[_ranges(first, held)] - rows[row_of] * movies] = -np.inf
        k = int(want.max())
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best = np.take_along_axis(best, np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable"),
                                  axis=1)
        keys.append((rows[:, None] * movies + best)[np.arange(k) < want[:, None]])
    return np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)


def _merge(keys: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """Union of sorted ``keys`` and new distinct ``fresh`` keys, sorted (timsort merges the two runs)."""
    return np.sort(np.concatenate([keys, np.sort(fresh)]), kind="stable")


def _sample_pairs(rng: np.random.Generator, world: _World, taste: np.ndarray, counts: np.ndarray,
                  mainstream: float) -> np.ndarray:
    """Sorted pair keys ``user * movies + movie``: ``counts[u]`` distinct movies per user.

    Each round draws with repetition and keeps, per user, the first draws that
    are new, which is exactly sequential drawing without replacement. Rounds
    oversample by each user's last acceptance rate; users whose remaining
    choice is too narrow for that to converge are finished exactly.
    """
    users, clusters = taste.shape
    movies = len(world.cluster)
    cumulative = np.cumsum(taste, axis=1)
    cumulative[:, -1] = 1.0
    taste_cdf = (cumulative + np.arange(users)[:, None]).ravel()
    keys = np.zeros(0, dtype=np.int64)
    need = counts.copy()
    acceptance = np.ones(users)
    for _ in range(SAMPLING_ROUNDS):
        active = np.flatnonzero((need > 0) & (acceptance >= MIN_ACCEPTANCE))
        if not len(active):
            break
        tries = np.ceil(need[active] / acceptance[active] * 1.2).astype(np.int64) + 1
        drawers = np.repeat(active, tries)
        fresh = drawers * movies + _draw(rng, world, taste_cdf, drawers, mainstream)
        slots = np.minimum(np.searchsorted(keys, fresh), max(len(keys) - 1, 0))
        new = keys[slots] != fresh if len(keys) else np.ones(len(fresh), dtype=bool)
        order = np.argsort(fresh, kind="stable")
        repeated = np.zeros(len(fresh), dtype=bool)
        repeated[order[1:]] = fresh[order[1:]] == fresh[order[:-1]]
        new &= ~repeated
        del order, repeated, slots
        # Keep each user's first need[u] new draws, in draw order (draws are grouped by user).
        group_starts = np.cumsum(tries) - tries
        running = np.cumsum(new)
        rank = running - np.repeat(running[group_starts] - new[group_starts], tries)
        accepted = new & (rank <= np.repeat(need[active], tries))
        need[active] -= np.add.reduceat(accepted, group_starts)
        acceptance[active] = np.add.reduceat(new, group_starts) / tries
        keys = _merge(keys, fresh[accepted])
    short = np.flatnonzero(need > 0)
    if len(short):
        keys = _merge(keys, _exact_draws(rng, world, taste, mainstream, short, need[short], keys))
    return keys


def _stars(rng: np.random.Generator, affinity: np.ndarray) -> np.ndarray:
    """Half-stars, higher for movies of a user's favourite clusters."""
    mean = 2.5 + 2.0 * np.sqrt(affinity) + rng.normal(0.0, 0.9, size=len(affinity))
    return np.clip(np.rint(mean * 2), 1, 10).astype(np.int8)


def _timestamps(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """Strictly increasing seconds per user, users laid out one after another."""
    users = len(counts)
    start = FIRST_TIMESTAMP + rng.integers(0, TIMESTAMP_SPAN, size=users)
    active_for = rng.uniform(86_400, 4 * 365 * 86_400, size=users)
    user_of = np.repeat(np.arange(users), counts)
    gaps = 1 + np.floor(rng.exponential(1.0, size=len(user_of)) * (active_for / counts)[user_of]).astype(np.int64)
    running = np.cumsum(gaps)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return start[user_of] + running - (running[first] - gaps[first])[user_of]


def _shuffle_within_users(rng: np.random.Generator, keys: np.ndarray, users: int, movies: int):
    """(user, movie) of each pair, users in order and each user's movies in random order.

    The order becomes time order. Sorting packed (user, random, movie) values
    rather than argsorting random keys is faster and leaves no ties whose
    order could differ between numpy builds, so files stay byte-identical.
    """
    user_bits, movie_bits = int(users).bit_length(), int(movies).bit_length()
    random_bits = 63 - user_bits - movie_bits
    user, movie = keys // movies, keys % movies
    if random_bits < 16:  # astronomically large sizes: a stable sort of random keys instead
        order = np.lexsort((rng.random(len(keys)), user))
        return user[order], movie[order]
    packed = (user << (random_bits + movie_bits)) | (rng.integers(0, 1 << random_bits, size=len(keys)) << movie_bits)
    packed |= movie
    del user, movie
    packed.sort()
    mask = (1 << movie_bits) - 1
    return packed >> (random_bits + movie_bits), packed & mask


def synthesize(users: int, movies: int, ratings: int, seed: int = 0, clusters: int = DEFAULT_CLUSTERS,
               mainstream: float = DEFAULT_MAINSTREAM, clusters_per_user: int = 0,
               zipf_exponent: float = ZIPF_EXPONENT, popularity_within_clusters: bool = False) -> Synthetic:
    """Generate a dataset in memory; ``ValueError`` when the sizes cannot be met.

    ``clusters_per_user`` > 0 splits each user's taste evenly over that many
    random clusters (0: the Dirichlet mixture); ``popularity_within_clusters``
    makes clusters equal-sized with Zipf popularity ranked inside each; the
    defaults give the original shape, byte for byte.
    """
    if users < 1 or movies < 2 or clusters < 1:
        raise ValueError("need at least 1 user, 2 movies and 1 cluster")
    if not 2 * users <= ratings <= users * movies:
        raise ValueError(f"ratings must be between 2 per user ({2 * users}) and every user rating every movie "
                         f"({users * movies}), got {ratings}")
    if not 0.0 < mainstream <= 1.0:
        raise ValueError(f"mainstream must be in (0, 1], got {mainstream}")
    if not 0 <= clusters_per_user <= min(clusters, movies):
        raise ValueError(f"clusters per user must be between 0 (a mixture) and the non-empty clusters "
                         f"({min(clusters, movies)}), got {clusters_per_user}")
    if not zipf_exponent > 0:
        raise ValueError(f"the Zipf exponent must be positive, got {zipf_exponent}")
    rng = np.random.default_rng(seed)
    world = _world(rng, movies, clusters, zipf_exponent, popularity_within_clusters)
    user_clusters = None
    if clusters_per_user:
        taste, user_clusters = _split_tastes(rng, users, world, clusters_per_user)
    else:
        taste = _tastes(rng, users, world)
    counts = _activity(rng, users, movies, ratings)
    keys = _sample_pairs(rng, world, taste, counts, mainstream)
    user, movie = _shuffle_within_users(rng, keys, users, movies)
    del keys
    catalogue = np.cumsum(rng.integers(1, 4, size=movies))  # sparse, increasing ids like MovieLens's
    return Synthetic(
        user_ids=(user + 1).astype(np.int32),
        movie_ids=catalogue[movie],
        stars=_stars(rng, taste[user, world.cluster[movie]]),
        timestamps=_timestamps(rng, counts),
        catalogue=catalogue,
        movie_cluster=world.cluster,
        seed=seed,
        user_clusters=user_clusters,
    )


# --------------------------------------------------------------------------- writing


def _titles(rng: np.random.Generator, count: int):
    """Titles, some holding commas and quotes the way GroupLens's do ("Lost River, The (1994)")."""
    import pyarrow as pa
    import pyarrow.compute as pc

    adjective = pc.take(pa.array(_ADJECTIVES), pa.array(rng.integers(0, len(_ADJECTIVES), size=count)))
    noun = pc.take(pa.array(_NOUNS), pa.array(rng.integers(0, len(_NOUNS), size=count)))
    year = pc.cast(pa.array(rng.integers(1920, 2020, size=count)), pa.string())
    shapes = (
        pc.binary_join_element_wise(adjective, noun, " "),                          # Lost River
        pc.binary_join_element_wise(adjective, " ", noun, ", The", ""),             # Lost River, The
        pc.binary_join_element_wise('"', adjective, '" ', noun, ""),                # "Lost" River
        pc.binary_join_element_wise(noun, ', The: "', adjective, '" Cut', ""),      # River, The: "Lost" Cut
    )
    shape = rng.choice(len(shapes), size=count, p=(0.7, 0.15, 0.08, 0.07))
    name = pc.case_when(pc.make_struct(*(pa.array(shape == k) for k in range(len(shapes)))), *shapes)
    return pc.binary_join_element_wise(name, " (", year, ")", "")


def _csv_field(values):
    """Quote values holding commas or quotes, doubling their quotes (RFC 4180)."""
    import pyarrow.compute as pc

    needs = pc.or_(pc.match_substring(values, ","), pc.match_substring(values, '"'))
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(values, '"', '""'), '"', "")
    return pc.if_else(needs, quoted, values)


def _write_atomically(path: Path, write) -> None:
    import pyarrow as pa

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with pa.OSFile(str(temporary), "wb") as sink:
            write(sink)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_ratings(data: Synthetic, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    stars = pa.array(_STARS)
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")

    def write(sink):
        sink.write(RATINGS_HEADER)
        for start in range(0, len(data.user_ids), _WRITE_CHUNK):
            end = start + _WRITE_CHUNK
            table = pa.table({
                "userId": data.user_ids[start:end],
                "movieId": data.movie_ids[start:end],
                "rating": stars.take(pa.array(data.stars[start:end] - 1)),
                "timestamp": data.timestamps[start:end],
            })
            pacsv.write_csv(table, sink, write_options=options)

    _write_atomically(path, write)


def _write_movies(data: Synthetic, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    # A stream of its own, so titles do not depend on how the ratings were drawn.
    rng = np.random.default_rng([data.seed, 1])
    clusters = int(data.movie_cluster.max()) + 1
    combos = [
        "|".join(sorted(rng.choice(_GENRES, size=rng.integers(1, 4), replace=False).tolist()))
        for _ in range(clusters)  # one genre mix per cluster: a handful of strings, not one per movie
    ]
    genres = pc.take(pa.array(combos), pa.array(data.movie_cluster))
    unlisted = pa.array(rng.random(len(data.catalogue)) < 0.01)
    genres = pc.if_else(unlisted, pa.scalar("(no genres listed)"), genres)
    lines = pc.binary_join_element_wise(
        pc.cast(pa.array(data.catalogue), pa.string()), _csv_field(_titles(rng, len(data.catalogue))), genres, ",")
    text = pc.binary_join_element_wise(lines, "", "\n").cast(pa.large_string())
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset:text.offset + len(text) + 1]

    def write(sink):
        sink.write(MOVIES_HEADER)
        sink.write(text.buffers()[2][int(offsets[0]):int(offsets[-1])])

    _write_atomically(path, write)


def write(data: Synthetic, out_dir: str | os.PathLike) -> SynthFiles:
    """Write ``ratings.csv`` and ``movies.csv`` (each replaced atomically) into ``out_dir``."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files = SynthFiles(ratings=folder / "ratings.csv", movies=folder / "movies.csv")
    _write_movies(data, files.movies)
    _write_ratings(data, files.ratings)
    return files


def generate(out_dir: str | os.PathLike, users: int, movies: int, ratings: int, seed: int = 0,
             clusters: int = DEFAULT_CLUSTERS, mainstream: float = DEFAULT_MAINSTREAM, clusters_per_user: int = 0,
             zipf_exponent: float = ZIPF_EXPONENT, popularity_within_clusters: bool = False) -> SynthFiles:
    """Generate a dataset and write it as MovieLens 25M's ``ratings.csv`` and ``movies.csv``."""
    return write(synthesize(users, movies, ratings, seed, clusters, mainstream, clusters_per_user, zipf_exponent,
                            popularity_within_clusters), out_dir)


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The generator's options; ``movierec synth`` shares them."""
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for ratings.csv and movies.csv")
    parser.add_argument("--users", type=int, default=6040, help="users (default 6040, as MovieLens 1M)")
    parser.add_argument("--movies", type=int, default=3706, help="movies in movies.csv (default 3706)")
    parser.add_argument("--ratings", type=int, default=1_000_209, help="ratings (default 1,000,209)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    parser.add_argument("--clusters", type=int, default=DEFAULT_CLUSTERS,
                        help=f"taste clusters: more = more structure to learn (default {DEFAULT_CLUSTERS})")
    parser.add_argument("--mainstream", type=float, default=DEFAULT_MAINSTREAM,
                        help=f"share of ratings drawn by popularity alone (default {DEFAULT_MAINSTREAM})")
    parser.add_argument("--clusters-per-user", type=int, default=0, metavar="N",
                        help="split each user's taste evenly over N random clusters (default 0: a Dirichlet "
                             "mixture leaning on 1-2 clusters)")
    parser.add_argument("--zipf-exponent", type=float, default=ZIPF_EXPONENT,
                        help=f"exponent of the popularity power law (default {ZIPF_EXPONENT})")
    parser.add_argument("--popularity-within-clusters", action="store_true",
                        help="equal-size clusters, each with its own Zipf popularity (default: one global ranking "
                             "and clusters drawn at random); with --clusters-per-user this is a clustered long tail")


def run(args: argparse.Namespace) -> SynthFiles:
    started = time.monotonic()
    files = generate(args.out, args.users, args.movies, args.ratings, seed=args.seed, clusters=args.clusters,
                     mainstream=args.mainstream, clusters_per_user=args.clusters_per_user,
                     zipf_exponent=args.zipf_exponent, popularity_within_clusters=args.popularity_within_clusters)
    print(f"wrote {files.ratings} ({args.ratings:,} ratings by {args.users:,} users) and {files.movies} "
          f"({args.movies:,} movies) in {time.monotonic() - started:.1f}s", flush=True)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="movierec-synth", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
