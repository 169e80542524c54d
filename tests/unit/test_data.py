"""Loading and splitting: malformed files fail with actionable messages, splits are sound."""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from trainer_service import data_root
from trainer_service.data import load_movielens_100k, load_ratings_files
from trainer_service.errors import DatasetError, DatasetPathError, MovieLensNotFound
from trainer_service.splits import carve_validation, make_split

GENRES = "|0" * 19


def item_line(movie_id: int, title: str) -> str:
    return f"{movie_id}|{title}|01-Jan-1995||http://example.invalid/{movie_id}{GENRES}"


ITEMS = [item_line(1, "Toy Story (1995)"), item_line(2, "Misérables, Les (1995)"), item_line(3, "Heat (1995)"),
         item_line(4, "Heat (1995)")]
RATINGS = ["7\t1\t5\t100", "7\t2\t3\t200", "7\t3\t4\t300", "12\t1\t1\t50", "12\t4\t2\t60", "3\t2\t4\t10"]


def write(root: Path, ratings=RATINGS, items=ITEMS, ratings_name="u.data", items_name="u.item") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / items_name).write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    if isinstance(ratings, bytes):
        (root / ratings_name).write_bytes(ratings)
    else:
        (root / ratings_name).write_text("\n".join(ratings) + "\n", encoding="ascii")
    return root


def test_loads_small_files_with_dense_indices_and_latin1_titles(tmp_path):
    root = write(tmp_path)
    ratings = load_ratings_files(str(root), "u.data", "u.item")
    assert ratings.user_ids.tolist() == ["3", "7", "12"]  # numeric order, kept as strings
    assert ratings.movie_ids.tolist() == [1, 2, 3, 4]
    assert ratings.titles[1] == "Misérables, Les (1995)"
    assert ratings.users.dtype == np.int32 and ratings.items.dtype == np.int32
    assert ratings.users.tolist() == [1, 1, 1, 2, 2, 0]
    assert ratings.items.tolist() == [0, 1, 2, 0, 3, 1]
    assert ratings.ratings.tolist() == [5, 3, 4, 1, 2, 4]
    assert ratings.timestamps.tolist() == [100, 200, 300, 50, 60, 10]
    assert len(ratings.fingerprint) == 64
    again = load_ratings_files(str(root), "u.data", "u.item")
    assert again.fingerprint == ratings.fingerprint


@pytest.mark.parametrize(
    ("ratings", "expected"),
    [
        (["7\t1\t5\t100", "7\t2\t3"], ["u.data:2", "expected 4", "found 3"]),
        (["7\t1\t5\t100", "x7\t2\t3\t200"], ["u.data:2", "user id", "'x7'"]),
        (["7\t1\t5\t100", "7\tone\t3\t200"], ["u.data:2", "movie id", "'one'"]),
        (["7\t1\tgood\t100"], ["u.data:1", "rating", "'good'"]),
        (["7\t1\t5\t100", "", "7\t99\t3\t200"], ["u.data:3", "movie id 99", "u.item"]),
        (["7\t1\t5\t100", "7\t1\t3\t200"], ["u.data:2", "already rated", "line 1"]),
        ([""], ["u.data", "empty"]),
        (b"7\t1\t5\t100\n7\t2\t\xff3\t200\n", ["u.data:2", "0xff", "not valid"]),
        ("7\t1\t5\t100\n".encode("utf-16"), ["u.data:1"]),  # a whole file in another encoding
    ],
)
def test_malformed_ratings_name_file_line_and_problem(tmp_path, ratings, expected):
    root = write(tmp_path, ratings=ratings)
    with pytest.raises(DatasetError) as error:
        load_ratings_files(str(root), "u.data", "u.item")
    assert not isinstance(error.value, DatasetPathError)
    for fragment in expected:
        assert fragment in str(error.value)


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([item_line(1, "A"), "2|B|01-Jan-1995"], ["u.item:2", "expected 24", "found 3"]),
        ([item_line(1, "A"), item_line(1, "B")], ["u.item:2", "movie id 1", "line 1"]),
        ([item_line(1, "A"), item_line(1, "B").replace("1|B", "x|B", 1)], ["u.item:2", "'x'"]),
    ],
)
def test_malformed_items_name_file_line_and_problem(tmp_path, items, expected):
    root = write(tmp_path, ratings=["7\t1\t5\t100"], items=items)
    with pytest.raises(DatasetError) as error:
        load_ratings_files(str(root), "u.data", "u.item")
    for fragment in expected:
        assert fragment in str(error.value)


def test_oversized_file_is_refused_without_reading_it(tmp_path):
    root = write(tmp_path)
    with open(root / "huge.data", "wb") as handle:  # sparse: costs no disk or read time
        handle.truncate(data_root.MAX_FILE_BYTES + 1)
    started = time.monotonic()
    with pytest.raises(DatasetError, match=r"huge\.data.*over the"):
        load_ratings_files(str(root), "huge.data", "u.item")
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("bad_path", ["/etc/passwd", "../outside/u.data", "sub/../../outside/u.data", "missing.data"])
def test_paths_must_stay_inside_the_data_root(tmp_path, bad_path):
    root = write(tmp_path / "root")
    write(tmp_path / "outside")
    with pytest.raises(DatasetPathError):
        load_ratings_files(str(root), bad_path, "u.item")


def test_symlink_leading_out_of_the_root_is_refused(tmp_path):
    root = write(tmp_path / "root")
    outside = write(tmp_path / "outside")
    os.symlink(outside / "u.data", root / "link.data")
    os.symlink(outside, root / "linkdir")
    with pytest.raises(DatasetPathError, match="outside the data root"):
        load_ratings_files(str(root), "link.data", "u.item")
    with pytest.raises(DatasetPathError, match="outside the data root"):
        load_ratings_files(str(root), "linkdir/u.data", "u.item")


def test_symlink_inside_the_root_is_allowed(tmp_path):
    root = write(tmp_path / "root")
    os.symlink(root / "u.data", root / "alias.data")
    assert len(load_ratings_files(str(root), "alias.data", "u.item")) == len(RATINGS)


def test_missing_data_root_is_a_path_error(tmp_path):
    with pytest.raises(DatasetPathError):
        load_ratings_files(str(tmp_path / "nope"), "u.data", "u.item")


def test_missing_movielens_says_what_to_download_and_where(tmp_path):
    with pytest.raises(MovieLensNotFound) as error:
        load_movielens_100k(str(tmp_path / "nowhere"))
    message = str(error.value)
    assert "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in message
    assert "--movielens-dir" in message and "MOVIELENS_DIR" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MovieLensNotFound, match="has no u.data"):
        load_movielens_100k(str(empty))


def test_tfds_fallback_fails_fast_offline(offline_without_tfds_cache):
    """Without a local copy the loader tries TFDS, and offline it fails at once, saying what to download."""
    assert not offline_without_tfds_cache.builder("movielens/100k-ratings").is_prepared()
    started = time.monotonic()
    with pytest.raises(MovieLensNotFound) as error:
        load_movielens_100k(None)
    assert "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in str(error.value)
    assert "is unreachable for a TFDS download" in str(error.value)
    assert time.monotonic() - started < 30  # a hang would be the bug; the probe alone allows 3 s


def test_zip_and_env_var_sources(tmp_path, monkeypatch):
    root = write(tmp_path / "ml-100k")
    (root / "ua.base").write_text("\n".join(RATINGS[:4]) + "\n")
    (root / "ua.test").write_text("\n".join(RATINGS[4:]) + "\n")
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for name in ("u.data", "u.item", "ua.base", "ua.test"):
            handle.write(root / name, f"ml-100k/{name}")
    from_zip, used = load_movielens_100k(str(archive))
    assert used == str(archive.resolve())
    monkeypatch.setenv("MOVIELENS_DIR", str(root))
    from_env, used_env = load_movielens_100k()
    assert used_env == str(root.resolve())
    assert from_zip.fingerprint == from_env.fingerprint
    assert make_split(from_zip, "ua", 10, 0).test.tolist() == [4, 5]


def test_real_movielens_titles_and_ids(movielens_dir):
    ratings, used = load_movielens_100k(str(movielens_dir))
    assert used == str(movielens_dir)
    assert (ratings.n_users, ratings.n_items, len(ratings)) == (943, 1682, 100_000)
    assert ratings.titles[ratings.movie_ids.tolist().index(1)] == "Toy Story (1995)"
    assert "Misérables, Les (1995)" in ratings.titles.tolist()
    # 18 titles appear twice under different movie ids; items are keyed by id so none merge.
    assert len(set(ratings.movie_ids.tolist())) == 1682
    assert len(set(ratings.titles.tolist())) == 1682 - 18
    assert "MovieLens 100K" in ratings.source


# --------------------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def movielens(movielens_dir):
    return load_movielens_100k(str(movielens_dir))[0]


def _check_partition(split):
    assert len(np.intersect1d(split.train, split.test)) == 0
    assert len(split.train) + len(split.test) == len(split.data)
    assert np.all(np.bincount(split.data.users[split.train], minlength=split.data.n_users) >= 1)


def test_random_split_sizes_disjoint_and_seeded(movielens):
    split = make_split(movielens, "random", 10, seed=7)
    _check_partition(split)
    per_user = np.bincount(movielens.users[split.test], minlength=movielens.n_users)
    assert np.all(per_user == 10)  # every ML-100K user has >= 20 ratings
    assert split.name == "random 10 per user (seed 7)"
    assert np.array_equal(make_split(movielens, "random", 10, seed=7).test, split.test)
    assert not np.array_equal(make_split(movielens, "random", 10, seed=8).test, split.test)


def test_users_keep_a_training_rating(tmp_path):
    ratings = load_ratings_files(str(write(tmp_path)), "u.data", "u.item")
    for holdout in ("random", "last_n_per_user"):
        split = make_split(ratings, holdout, 5, seed=0)
        _check_partition(split)
        assert np.bincount(ratings.users[split.test], minlength=3).tolist() == [0, 2, 1]


def test_last_n_per_user_holds_out_the_latest(movielens):
    split = make_split(movielens, "last_n_per_user", 3, seed=0)
    _check_partition(split)
    latest_train = np.full(movielens.n_users, -1)
    np.maximum.at(latest_train, movielens.users[split.train], movielens.timestamps[split.train])
    earliest_test = np.full(movielens.n_users, np.iinfo(np.int64).max)
    np.minimum.at(earliest_test, movielens.users[split.test], movielens.timestamps[split.test])
    assert np.all(latest_train <= earliest_test)


def test_ua_split_matches_the_grouplens_files(movielens, movielens_dir):
    split = make_split(movielens, "ua", 0, seed=0)
    _check_partition(split)
    assert split.name == "ua.base -> ua.test"
    expected = set()
    for line in (movielens_dir / "ua.test").read_text().splitlines():
        user, movie, _, _ = line.split("\t")
        expected.add((user, int(movie)))
    got = {(movielens.user_ids[u], int(movielens.movie_ids[i]))
           for u, i in zip(movielens.users[split.test], movielens.items[split.test], strict=True)}
    assert got == expected and len(split.test) == 9430
    indptr, items = split.test_csr()
    assert np.all(np.diff(indptr) == 10) and len(items) == 9430


def test_predefined_split_needs_grouplens_data(tmp_path):
    ratings = load_ratings_files(str(write(tmp_path)), "u.data", "u.item")
    with pytest.raises(DatasetError, match="GroupLens"):
        make_split(ratings, "ua", 10, seed=0)
    with pytest.raises(DatasetError, match="unknown holdout"):
        make_split(ratings, "sideways", 10, seed=0)


def test_validation_is_carved_from_train_only(movielens):
    split = make_split(movielens, "ua", 0, seed=0)
    validation = carve_validation(split, 5, seed=3)
    assert set(validation.train) | set(validation.test) == set(split.train)
    assert len(np.intersect1d(validation.test, split.test)) == 0
    assert len(validation.test) == 5 * movielens.n_users
