"""The synthetic generator: same seed, same bytes; the shape asked for; power-law
popularity; taste structure a model can learn; files the loader reads."""

from __future__ import annotations

import csv
import time
from importlib import metadata

import numpy as np
import pytest

from trainer_service import synth
from trainer_service.data import load_ratings_files
from trainer_service.splits import make_split


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    files = synth.generate(folder, users=2000, movies=1000, ratings=60_000, seed=11)
    return folder, files, load_ratings_files(str(folder), "ratings.csv", "movies.csv")


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, generated):
    folder, files, _ = generated
    again = synth.generate(tmp_path / "again", users=2000, movies=1000, ratings=60_000, seed=11)
    assert again.ratings.read_bytes() == files.ratings.read_bytes()
    assert again.movies.read_bytes() == files.movies.read_bytes()
    other = synth.generate(tmp_path / "other", users=2000, movies=1000, ratings=60_000, seed=12)
    assert other.ratings.read_bytes() != files.ratings.read_bytes()


def test_the_requested_shape_in_movielens_25m_format(generated):
    _, files, ratings = generated
    lines = files.ratings.read_text().splitlines()
    assert lines[0] == "userId,movieId,rating,timestamp" and len(lines) == 60_001
    assert (ratings.n_users, ratings.n_items, len(ratings)) == (2000, 1000, 60_000)
    assert ratings.user_ids.tolist() == [str(u) for u in range(1, 2001)]
    counts = np.bincount(ratings.users)
    assert counts.min() >= 2 and counts.max() > 10 * np.median(counts)  # heavy-tailed activity
    keys = ratings.users.astype(np.int64) * ratings.n_items + ratings.items
    assert len(np.unique(keys)) == len(keys)  # no user rates a movie twice
    assert set(np.unique(ratings.ratings).tolist()) <= {x / 2 for x in range(1, 11)}
    # Rows by user, then time; each user's timestamps strictly increase.
    same_user = ratings.users[1:] == ratings.users[:-1]
    assert np.all(ratings.users[1:] >= ratings.users[:-1])
    assert np.all(np.diff(ratings.timestamps)[same_user] > 0)


def test_movies_csv_quotes_titles_holding_commas_and_quotes(generated):
    _, files, ratings = generated
    with open(files.movies, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["movieId", "title", "genres"]
    assert [r[1] for r in rows[1:]] == ratings.titles.tolist()  # the loader and Python's csv agree
    assert [int(r[0]) for r in rows[1:]] == ratings.movie_ids.tolist()
    text = files.movies.read_text("utf-8")
    assert any("," in r[1] for r in rows[1:]) and any('"' in r[1] for r in rows[1:])
    assert '""' in text  # quotes inside titles are doubled


def test_popularity_follows_a_power_law(tmp_path):
    synth.generate(tmp_path, users=3000, movies=20_000, ratings=100_000, seed=3)
    ratings = load_ratings_files(str(tmp_path), "ratings.csv", "movies.csv")
    popularity = np.sort(np.bincount(ratings.items, minlength=ratings.n_items))[::-1]
    assert popularity[:200].sum() / popularity.sum() > 0.2  # the top 1% of movies hold over 20% of ratings
    assert (popularity == 0).mean() > 0.1  # a long tail nobody rated
    ranks = np.arange(1, len(popularity) + 1)
    body = (ranks >= 3) & (ranks <= 2000)
    slope = np.polyfit(np.log(ranks[body]), np.log(popularity[body]), 1)[0]
    assert -1.5 < slope < -0.5  # straight-ish on log-log, Zipf-like


def test_taste_structure_beats_popularity(generated):
    """Item-to-item co-occurrence (a few lines of numpy) beats "most popular" by 1.5x Recall@10
    on each user's last rating, so the data has structure beyond popularity to learn."""
    _, _, ratings = generated
    split = make_split(ratings, "last_n_per_user", 1, seed=0)
    seen = np.zeros((ratings.n_users, ratings.n_items), dtype=np.float32)
    seen[ratings.users[split.train], ratings.items[split.train]] = 1
    held_out = np.full(ratings.n_users, -1)
    held_out[ratings.users[split.test]] = ratings.items[split.test]
    cooccurrence = seen.T @ seen
    norms = np.sqrt(np.diag(cooccurrence)) + 1e-9
    similarity = cooccurrence / norms[:, None] / norms[None, :]
    np.fill_diagonal(similarity, 0)

    def recall_at_10(scores):
        scores = np.where(seen > 0, -np.inf, scores)
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        users = held_out >= 0
        return (top[users] == held_out[users, None]).any(axis=1).mean()

    taste = recall_at_10(seen @ similarity)
    popular = recall_at_10(np.broadcast_to(seen.sum(axis=0), seen.shape))
    assert taste >= 1.5 * popular, (taste, popular)


def test_a_million_movie_catalogue_mostly_unrated(tmp_path):
    started = time.monotonic()
    files = synth.generate(tmp_path, users=50_000, movies=1_000_000, ratings=2_000_000, seed=1)
    generated_in = time.monotonic() - started
    ratings = load_ratings_files(str(tmp_path), "ratings.csv", "movies.csv")
    assert (ratings.n_users, ratings.n_items, len(ratings)) == (50_000, 1_000_000, 2_000_000)
    assert len(np.unique(ratings.items)) < 500_000  # most movies have no rating, yet movies.csv lists them all
    assert files.movies.read_bytes().count(b"\n") == 1_000_001
    assert generated_in < 60  # about 4 s on two cores


def test_impossible_sizes_are_refused():
    with pytest.raises(ValueError, match="2 per user"):
        synth.synthesize(users=10, movies=5, ratings=19)
    with pytest.raises(ValueError, match="every user rating every movie"):
        synth.synthesize(users=10, movies=5, ratings=51)
    full = synth.synthesize(users=10, movies=5, ratings=50, seed=2)  # every user rates every movie
    assert len(np.unique(full.user_ids.astype(np.int64) * 100 + full.movie_ids)) == 50


def test_movierec_synth_writes_what_the_library_writes(tmp_path, capsys):
    (script,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "movierec-synth"]
    assert script.load() is synth.main
    args = ["--users", "50", "--movies", "80", "--ratings", "700", "--seed", "4"]
    assert synth.main(["--out", str(tmp_path / "a"), *args]) == 0
    library = synth.generate(tmp_path / "c", users=50, movies=80, ratings=700, seed=4)
    for name in ("ratings.csv", "movies.csv"):
        assert (tmp_path / "a" / name).read_bytes() == getattr(library, name.split(".")[0]).read_bytes()
    assert "700 ratings by 50 users" in capsys.readouterr().out


def test_movierec_synth_refuses_impossible_sizes_as_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        synth.main(["--out", str(tmp_path / "d"), "--users", "50", "--ratings", "10"])
    assert exited.value.code == 2
    assert "2 per user" in capsys.readouterr().err
    assert not (tmp_path / "d" / "ratings.csv").exists()


def test_clustered_long_tail_shape_keeps_users_in_their_clusters_with_hits_in_every_cluster():
    """--clusters-per-user 2 --popularity-within-clusters: equal clusters, each with its own Zipf head and
    tail, and each user's ratings drawn from their two clusters (apart from the mainstream share)."""
    data = synth.synthesize(users=600, movies=4000, ratings=12_000, seed=5, clusters=40, clusters_per_user=2,
                            popularity_within_clusters=True)
    assert data.user_clusters is not None and data.user_clusters.shape == (600, 2)
    assert np.all(data.user_clusters[:, 0] != data.user_clusters[:, 1])
    assert np.ptp(np.bincount(data.movie_cluster, minlength=40)) <= 1  # equal-size clusters
    movie = np.searchsorted(data.catalogue, data.movie_ids)
    cluster = data.movie_cluster[movie]
    own = data.user_clusters[data.user_ids - 1]
    in_own = (cluster == own[:, 0]) | (cluster == own[:, 1])
    assert in_own.mean() > 0.85  # 90% drawn by taste, plus mainstream picks that land in a user's own clusters
    counts = np.bincount(movie, minlength=4000)
    shares = []
    for c in range(40):
        within = np.sort(counts[data.movie_cluster == c])[::-1]
        shares.append(within[:10].sum() / max(within.sum(), 1))
    assert np.median(shares) > 0.3  # the top 10% of a cluster's movies hold a long-tailed share of its ratings
    assert len(np.unique(data.movie_cluster[np.argsort(-counts)[:40]])) >= 20  # the hits are spread over clusters
    default = synth.synthesize(users=600, movies=4000, ratings=12_000, seed=5, clusters=40)
    assert default.user_clusters is None


def test_movierec_synth_offers_the_clustered_shape(tmp_path):
    shape = ["--users", "40", "--movies", "200", "--ratings", "400", "--seed", "4", "--clusters", "10"]
    assert synth.main(["--out", str(tmp_path / "a"), *shape, "--clusters-per-user", "2",
                       "--popularity-within-clusters", "--zipf-exponent", "1.2"]) == 0
    library = synth.generate(tmp_path / "b", users=40, movies=200, ratings=400, seed=4, clusters=10,
                             clusters_per_user=2, popularity_within_clusters=True, zipf_exponent=1.2)
    assert (tmp_path / "a" / "ratings.csv").read_bytes() == library.ratings.read_bytes()
    plain = synth.generate(tmp_path / "c", users=40, movies=200, ratings=400, seed=4, clusters=10)
    assert plain.ratings.read_bytes() != library.ratings.read_bytes()
    with pytest.raises(ValueError, match="clusters per user"):
        synth.synthesize(users=40, movies=200, ratings=400, clusters=10, clusters_per_user=11)
