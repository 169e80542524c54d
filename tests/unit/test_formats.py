"""Every GroupLens layout loads to the same ratings; bad rows name file and line;
GroupLens folders and zips of any release are found; dataset names are checked."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from trainer_service import data, data_root, formats, layouts, releases
from trainer_service.config import TrainerConfig
from trainer_service.data import load_movielens, load_ratings_files
from trainer_service.errors import DatasetError, InvalidRequest, MovieLensNotFound
from trainer_service.jobs import TrainSpec
from trainer_service.releases import release_named
from trainer_service.train_request import validate_spec

# One small dataset: (user, movie, rating, timestamp) rows and (movie, title) pairs.
ROWS = [(7, 1, 5.0, 100), (7, 2, 3.5, 200), (7, 3, 4.0, 300), (12, 1, 1.0, 50), (12, 4, 2.0, 60), (3, 2, 4.5, 10)]
MOVIES = [(1, "Toy Story (1995)"), (2, "Misérables, Les (1995)"), (3, 'City of Lost Children, The "Cité" (1995)'),
          (4, "Heat (1995)")]
GENRES = "|0" * 19


def _lines(lines: list[str], encoding: str = "utf-8") -> bytes:
    return ("\n".join(lines) + "\n").encode(encoding)


def _csv_title(title: str) -> str:
    return f'"{title.replace(chr(34), 2 * chr(34))}"' if ("," in title or '"' in title) else title


def ratings_bytes(layout: str, rows=ROWS) -> bytes:
    if layout == "100k":
        return _lines([f"{u}\t{m}\t{r:g}\t{t}" for u, m, r, t in rows])
    if layout == "dat":
        return _lines([f"{u}::{m}::{r:g}::{t}" for u, m, r, t in rows])
    return _lines(["userId,movieId,rating,timestamp", *(f"{u},{m},{r:.1f},{t}" for u, m, r, t in rows)])


def movies_bytes(layout: str, movies=MOVIES, encoding: str = "utf-8") -> bytes:
    if layout == "100k":
        return _lines([f"{m}|{t}|01-Jan-1995||http://example.invalid/{m}{GENRES}" for m, t in movies], "latin-1")
    if layout == "dat":
        return _lines([f"{m}::{t}::Drama|Comedy" for m, t in movies], encoding)
    return _lines(["movieId,title,genres", *(f"{m},{_csv_title(t)},Drama|Comedy" for m, t in movies)])


LAYOUT_FILES = {"100k": ("u.data", "u.item"), "dat": ("ratings.dat", "movies.dat"),
                "csv": ("ratings.csv", "movies.csv")}


def write_layout(folder: Path, layout: str, encoding: str = "utf-8", names=None) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    ratings_name, movies_name = names or LAYOUT_FILES[layout]
    (folder / ratings_name).write_bytes(ratings_bytes(layout))
    (folder / movies_name).write_bytes(movies_bytes(layout, encoding=encoding))
    return ratings_name, movies_name


def assert_the_small_dataset(ratings) -> None:
    assert ratings.user_ids.tolist() == ["3", "7", "12"]  # numeric order
    assert ratings.movie_ids.tolist() == [1, 2, 3, 4]
    assert ratings.titles.tolist() == [title for _, title in MOVIES]
    assert ratings.users.dtype == np.int32 and ratings.items.dtype == np.int32
    assert ratings.ratings.dtype == np.float32 and ratings.timestamps.dtype == np.int64
    assert ratings.users.tolist() == [1, 1, 1, 2, 2, 0]
    assert ratings.items.tolist() == [0, 1, 2, 0, 3, 1]
    assert ratings.ratings.tolist() == [r for _, _, r, _ in ROWS]
    assert ratings.timestamps.tolist() == [t for *_, t in ROWS]


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize(("layout", "encoding", "family"), [
    ("100k", "latin-1", "ML-100K"),
    ("dat", "latin-1", "ML-1M/10M"),   # ML-1M's movies.dat
    ("dat", "utf-8", "ML-1M/10M"),     # ML-10M's
    ("csv", "utf-8", "ML-20M/25M"),
])
def test_every_layout_loads_the_same_ratings(tmp_path, layout, encoding, family):
    ratings_name, movies_name = write_layout(tmp_path, layout, encoding)
    ratings = load_ratings_files(str(tmp_path), ratings_name, movies_name)
    assert_the_small_dataset(ratings)
    assert family in ratings.source
    assert ("latin-1" in ratings.source) == (layout != "csv" and encoding == "latin-1")


@pytest.mark.parametrize("layout", ["100k", "dat", "csv"])
def test_layout_is_recognised_by_content_whatever_the_file_names(tmp_path, layout):
    write_layout(tmp_path, layout, names=("my-ratings.txt", "my-movies.txt"))
    assert_the_small_dataset(load_ratings_files(str(tmp_path), "my-ratings.txt", "my-movies.txt"))
    assert layouts.detect_ratings_layout(ratings_bytes(layout), "x").name == LAYOUT_FILES[layout][0]
    assert layouts.detect_items_layout(movies_bytes(layout), "x").name == LAYOUT_FILES[layout][1]


def test_the_two_files_may_use_different_layouts(tmp_path):
    (tmp_path / "ratings.csv").write_bytes(ratings_bytes("csv"))
    (tmp_path / "u.item").write_bytes(movies_bytes("100k"))
    ratings = load_ratings_files(str(tmp_path), "ratings.csv", "u.item")
    assert_the_small_dataset(ratings)
    assert "ML-20M/25M" in ratings.source and "ML-100K" in ratings.source


def test_csv_quoting_windows_line_ends_blank_lines_and_a_byte_order_mark(tmp_path):
    ratings = b"\xef\xbb\xbf" + ratings_bytes("csv").replace(b"\n", b"\r\n").replace(b"\r\n7,2", b"\r\n\r\n7,2")
    (tmp_path / "ratings.csv").write_bytes(ratings)
    (tmp_path / "movies.csv").write_bytes(movies_bytes("csv").replace(b"\n", b"\r\n"))
    assert_the_small_dataset(load_ratings_files(str(tmp_path), "ratings.csv", "movies.csv"))
    text = (tmp_path / "movies.csv").read_text("utf-8")
    assert '"City of Lost Children, The ""Cité"" (1995)"' in text  # the fixture really is quoted


def test_dat_files_whose_titles_hold_the_stand_in_separator_byte(tmp_path):
    (tmp_path / "ratings.dat").write_bytes(ratings_bytes("dat"))
    movies = [(m, f"{t}\x1f") if m == 2 else (m, t) for m, t in MOVIES]
    (tmp_path / "movies.dat").write_bytes(movies_bytes("dat", movies))
    assert load_ratings_files(str(tmp_path), "ratings.dat", "movies.dat").titles[1] == "Misérables, Les (1995)\x1f"


def test_a_late_bad_line_in_a_dat_file_is_found_without_scanning_from_the_top(tmp_path):
    rows = [f"{u}::{m}::4::{u * 100 + m}" for u in range(1, 2001) for m in range(1, 5)]
    rows[7000] = "1751::3::4"
    (tmp_path / "ratings.dat").write_bytes(_lines(rows))
    (tmp_path / "movies.dat").write_bytes(movies_bytes("dat"))
    with pytest.raises(DatasetError, match=r"ratings\.dat:7001: expected 4 '::'-separated fields"):
        load_ratings_files(str(tmp_path), "ratings.dat", "movies.dat")


def test_spaces_around_numbers_are_accepted_by_the_line_parser(tmp_path):
    (tmp_path / "u.data").write_bytes(ratings_bytes("100k").replace(b"\t", b" \t "))
    (tmp_path / "u.item").write_bytes(movies_bytes("100k"))
    assert_the_small_dataset(load_ratings_files(str(tmp_path), "u.data", "u.item"))


def test_large_file_loads_through_the_vectorised_path_and_names_late_lines(tmp_path, monkeypatch):
    n_users, per_user = 2000, 50
    users = np.repeat(np.arange(1, n_users + 1), per_user)
    movies = np.tile(np.arange(1, per_user + 1), n_users)
    lines = [f"{u},{m},4.0,{1000 + i}" for i, (u, m) in enumerate(zip(users.tolist(), movies.tolist(), strict=True))]
    (tmp_path / "movies.csv").write_bytes(_lines(["movieId,title,genres", *(f"{m},M{m},Drama" for m in range(1, 51))]))
    (tmp_path / "ratings.csv").write_bytes(_lines(["userId,movieId,rating,timestamp", *lines]))
    # The path, not a time: with the line parser's entry points raising, a good file still loads.
    with monkeypatch.context() as patched:
        for entry in ("raise_first_bad_line", "data_lines"):
            def line_parser_called(*args, _entry=entry, **kwargs):
                raise AssertionError(f"the line parser ({_entry}) read a file pyarrow accepts")
            patched.setattr(formats, entry, line_parser_called)
        started = time.monotonic()
        ratings = load_ratings_files(str(tmp_path), "ratings.csv", "movies.csv")
        seconds = time.monotonic() - started
    assert len(ratings) == 100_000 and ratings.n_users == n_users and seconds < 10
    # A repeat at line 90,002, after two blank lines: found on the arrays, line counted exactly.
    bad = ["userId,movieId,rating,timestamp", *lines[:50_000], "", "", *lines[50_000:90_000], lines[3], *lines[90_000:]]
    (tmp_path / "ratings.csv").write_bytes(_lines(bad))
    with pytest.raises(DatasetError, match=r"ratings\.csv:90004: user 1 already rated movie 4 on line 5"):
        load_ratings_files(str(tmp_path), "ratings.csv", "movies.csv")
    # A short row late in the file: pyarrow refuses, the line scan names it.
    bad = ["userId,movieId,rating,timestamp", *lines[:80_000], "17,3,4.0", *lines[80_000:]]
    (tmp_path / "ratings.csv").write_bytes(_lines(bad))
    with pytest.raises(DatasetError, match=r"ratings\.csv:80002: expected 4 comma-separated fields .* found 3"):
        load_ratings_files(str(tmp_path), "ratings.csv", "movies.csv")


# --------------------------------------------------------------------------- bad rows


CSV_HEADER = "userId,movieId,rating,timestamp"


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("ratings.dat", b"7::1::5::100\n7::2::3\n", ["ratings.dat:2", "expected 4 '::'-separated", "found 3"]),
    ("ratings.dat", b"7::1::5::100\n7::x::3::200\n", ["ratings.dat:2", "movie id", "'x'"]),
    ("ratings.dat", b"7::1::5::100\n7::2::nan::200\n", ["ratings.dat:2", "rating", "not finite"]),
    ("ratings.dat", b"7::1::5::100\n7::1::4::200\n", ["ratings.dat:2", "already rated movie 1", "line 1"]),
    ("ratings.dat", b"7::1::5::100\n\n7::99::4::200\n", ["ratings.dat:3", "movie id 99", "movies.dat"]),
    ("ratings.dat", b"7::1::5::100\n7::2::\xff4::200\n", ["ratings.dat:2", "0xff", "not valid utf-8"]),
    ("ratings.csv", f"{CSV_HEADER}\n7,1,5.0,100\n7,2,3.0\n".encode(), ["ratings.csv:3", "expected 4", "found 3"]),
    ("ratings.csv", f"{CSV_HEADER}\n7,1,5.0,100\n7,2,inf,200\n".encode(), ["ratings.csv:3", "not finite"]),
    ("ratings.csv", f"{CSV_HEADER}\n7,1,5.0,100\n7,2,good,200\n".encode(), ["ratings.csv:3", "rating", "'good'"]),
    ("ratings.csv", f"{CSV_HEADER}\n7,1,5.0,100\n7,1,3.0,200\n".encode(), ["ratings.csv:3", "already rated", "line 2"]),
    ("ratings.csv", f"{CSV_HEADER}\n7,1,5.0,100\n7,99,3.0,200\n".encode(), ["ratings.csv:3", "movie id 99"]),
    ("ratings.csv", f"{CSV_HEADER}\n7,1,5.0,100\n7.5,2,3.0,200\n".encode(), ["ratings.csv:3", "user id", "'7.5'"]),
    ("ratings.csv", b"user,movie,stars,time\n7,1,5.0,100\n", ["ratings.csv:1", "header line userId,movieId"]),
    ("ratings.csv", b"7,1,5.0,100\n", ["ratings.csv:1", "header line"]),
    ("ratings.csv", f"{CSV_HEADER}\n".encode(), ["ratings.csv", "no ratings"]),
    ("ratings.csv", b"", ["ratings.csv", "empty"]),
    ("ratings.csv", b" \n\n", ["ratings.csv", "empty"]),
    ("ratings.csv", f"{CSV_HEADER}\n7,1,5.0,100\n7,2,3.0,\x00\n".encode(), ["ratings.csv:3", "NUL"]),
])
def test_bad_ratings_rows_name_file_and_line(tmp_path, name, content, expected):
    (tmp_path / name).write_bytes(content)
    layout = "csv" if name.endswith(".csv") else "dat"
    movies_name = LAYOUT_FILES[layout][1]
    (tmp_path / movies_name).write_bytes(movies_bytes(layout))
    with pytest.raises(DatasetError) as error:
        load_ratings_files(str(tmp_path), name, movies_name)
    for fragment in expected:
        assert fragment in str(error.value)


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("movies.csv", b"movieId,title,genres\n1,Toy Story (1995),Comedy\n2,Heat, The (1995),Drama\n",
     ["movies.csv:3", "expected 3 comma-separated", "found 4", "quoted"]),
    ("movies.csv", b'movieId,title,genres\n1,Toy Story (1995),Comedy\n2,"Heat (1995),Drama\n',
     ["movies.csv:3"]),
    ("movies.csv", b"movieId,title,genres\n1,Mis\xe9rables (1995),Drama\n",
     ["movies.csv:2", "0xe9", "not valid utf-8"]),
    ("movies.csv", b"movieId,title,genres\n1,A,Drama\n1,B,Drama\n", ["movies.csv:3", "movie id 1", "line 2"]),
    ("movies.csv", b"movieId,title,genres\nx,A,Drama\n", ["movies.csv:2", "movie id", "'x'"]),
    ("movies.csv", b"id,name\n1,A\n", ["movies.csv:1", "header line movieId,title,genres"]),
    ("movies.csv", b"movieId,title,genres\n1,A,Drama\n2,B\x00,Drama\n", ["movies.csv:3", "NUL"]),
    ("movies.csv", b"movieId,title,genres\n1,A\x00,Drama\n2,B\n", ["movies.csv:2", "NUL"]),  # before pyarrow's error
    ("movies.dat", b"1::A::Drama\n2::B\n", ["movies.dat:2", "expected 3 '::'-separated", "found 2"]),
    ("movies.dat", b"1::A::Drama\n\n1::B::Drama\n", ["movies.dat:3", "movie id 1 already defined on line 1"]),
])
def test_bad_movie_rows_name_file_and_line(tmp_path, name, content, expected):
    (tmp_path / name).write_bytes(content)
    (tmp_path / "ratings.csv").write_bytes(_lines([CSV_HEADER, "7,1,5.0,100"]))
    with pytest.raises(DatasetError) as error:
        load_ratings_files(str(tmp_path), "ratings.csv", name)
    for fragment in expected:
        assert fragment in str(error.value)


def test_the_size_limit_is_a_parameter(tmp_path):
    write_layout(tmp_path, "csv")
    with pytest.raises(DatasetError, match=r"(ratings|movies)\.csv: file is \d+ bytes, over the 100-byte limit"):
        load_ratings_files(str(tmp_path), "ratings.csv", "movies.csv", max_bytes=100)
    assert data_root.MAX_FILE_BYTES == 2 * 1024 ** 3  # ML-25M's ratings.csv (about 680 MB) fits by default


# --------------------------------------------------------------------------- GroupLens copies


def _zip(path: Path, top: str, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(f"{top}/{name}" if top else name, content)
    return path


def _copy_files(layout: str, encoding: str = "utf-8") -> dict[str, bytes]:
    ratings_name, movies_name = LAYOUT_FILES[layout]
    return {ratings_name: ratings_bytes(layout), movies_name: movies_bytes(layout, encoding=encoding)}


@pytest.mark.parametrize(("zip_name", "top", "extra", "layout", "title"), [
    ("ml-1m.zip", "ml-1m", {"users.dat": b"7::M::25::1::0\n"}, "dat", "MovieLens 1M"),
    ("ml-10m.zip", "ml-10M100K", {"tags.dat": b""}, "dat", "MovieLens 10M"),
    ("ml-20m.zip", "ml-20m", {}, "csv", "MovieLens 20M"),
    ("ml-25m.zip", "ml-25m", {"README.txt": b"This dataset (ml-25m) describes 5-star rating..."}, "csv",
     "MovieLens 25M"),
    ("ml-latest-small.zip", "ml-latest-small", {}, "csv", "MovieLens latest (small)"),
    ("export.zip", "dump-2024", {"README.txt": b"This dataset (ml-25m) describes ..."}, "csv", "MovieLens 25M"),
    ("ratings.zip", "whatever", {}, "csv", "MovieLens ratings.csv + movies.csv"),
])
def test_grouplens_zips_of_every_release_are_found_under_any_top_folder(tmp_path, zip_name, top, extra, layout, title):
    archive = _zip(tmp_path / zip_name, top, {**_copy_files(layout, "latin-1"), **extra})
    ratings, where = load_movielens("", str(archive))
    assert_the_small_dataset(ratings)
    assert where == str(archive.resolve())
    assert ratings.source.startswith(title) and ratings.grouplens_root is None  # predefined splits are 100K only


def test_grouplens_folders_and_the_environment_variable(tmp_path, monkeypatch):
    folder = tmp_path / "ml-1m"
    write_layout(folder, "dat", "latin-1")
    (folder / "users.dat").write_bytes(b"7::M::25::1::0\n")
    monkeypatch.setenv("MOVIELENS_DIR", str(folder))
    ratings, where = load_movielens("movielens/1m-ratings")
    assert_the_small_dataset(ratings)
    assert where == str(folder.resolve()) and ratings.source.startswith("MovieLens 1M")
    hundred_k = tmp_path / "ml-100k"
    write_layout(hundred_k, "100k", "latin-1")
    ratings, _ = load_movielens("movielens/100k-ratings", str(hundred_k))
    assert ratings.grouplens_root == str(hundred_k.resolve())


def test_a_name_the_local_copy_does_not_hold_goes_to_tfds_and_fails_fast_offline(tmp_path,
                                                                                  offline_without_tfds_cache):
    """No download: TFDS has nothing cached and the probe meets a closed local port, as offline."""
    assert not offline_without_tfds_cache.builder("movielens/25m-ratings").is_prepared()
    archive = _zip(tmp_path / "ml-1m.zip", "ml-1m", {**_copy_files("dat"), "users.dat": b""})
    started = time.monotonic()
    with pytest.raises(MovieLensNotFound) as error:
        load_movielens("movielens/25m-ratings", str(archive))
    message = str(error.value)
    assert time.monotonic() - started < 30
    assert "https://files.grouplens.org/datasets/movielens/ml-25m.zip" in message
    assert "holds MovieLens 1M, not MovieLens 25M" in message
    assert "--movielens-dir" in message and "MOVIELENS_DIR" in message


def test_a_folder_without_movielens_files_names_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MovieLensNotFound, match="has no u.data and u.item, ratings.dat and movies.dat, or ratings.csv"):
        load_movielens("", str(tmp_path / "empty"))


# --------------------------------------------------------------------------- names


def test_dataset_names_are_checked():
    assert release_named("movielens/1m-ratings").url == "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    with pytest.raises(DatasetError) as error:
        release_named("movielens/10m-ratings")
    for name in ("movielens/100k-ratings", "movielens/1m-ratings", "movielens/20m-ratings", "movielens/25m-ratings"):
        assert name in str(error.value)
    with pytest.raises(DatasetError, match="unknown dataset name"):
        load_movielens("ml-25m")  # refused before anything is read or downloaded


@pytest.mark.parametrize(("spec", "expected"), [
    (TrainSpec(model="ease", dataset_name="movielens/3m-ratings"), "choose one of: movielens/100k-ratings"),
    (TrainSpec(model="ease", dataset_name="movielens/1m-ratings", ratings_path="r.csv", items_path="m.csv"),
     "not both"),
    (TrainSpec(model="ease", dataset_name="movielens/25m-ratings", holdout="ua"), "MovieLens 100K split"),
])
def test_train_requests_with_bad_dataset_names_are_refused(tmp_path, spec, expected):
    with pytest.raises(InvalidRequest, match=expected):
        validate_spec(spec, TrainerConfig(model_root=str(tmp_path), data_root=str(tmp_path)))


def test_valid_dataset_names_pass_validation_without_loading(tmp_path):
    for name in releases.DATASET_NAMES:
        validate_spec(TrainSpec(model="two_tower", dataset_name=name), TrainerConfig(model_root=str(tmp_path)))
    validate_spec(TrainSpec(model="ease", dataset_name="movielens/100k-ratings", holdout="ua"),
                  TrainerConfig(model_root=str(tmp_path)))


def test_tfds_examples_become_the_same_ratings():
    """The TFDS path's conversion, on arrays shaped like tfds.as_numpy's batches (ids as byte strings)."""
    titles = {m: t.encode() for m, t in MOVIES}
    rows = ROWS
    batches = [
        {"user_id": np.array([str(u).encode() for u, *_ in part], dtype=object),
         "movie_id": np.array([str(m).encode() for _, m, *_ in part], dtype=object),
         "user_rating": np.array([r for *_, r, _ in part], dtype=np.float32),
         "timestamp": np.array([t for *_, t in part], dtype=np.int64),
         "movie_title": np.array([titles[m] for _, m, *_ in part], dtype=object)}
        for part in (rows[:4], rows[4:])
    ]
    ratings = data.ratings_from_tfds(batches, release_named("movielens/1m-ratings"), "/tfds")
    assert_the_small_dataset(ratings)
    assert ratings.source == "MovieLens 1M (TFDS movielens/1m-ratings in /tfds)"
