"""Where a job's ratings come from: your files under the data root, a GroupLens copy, or tensorflow-datasets.

The GroupLens files are parsed here (see ``formats``) rather than through
``tensorflow_datasets.structured.movielens_parsing``: that parser assumes fixed
file names inside a folder, reports a short line as an ``IndexError`` without
a line number, and goes through TensorFlow's file layer. Paths here come from
remote requests, so they must be confined to a data root (``data_root``, the
security boundary) and every malformed line must produce a message a person
can act on. TFDS is only the last resort for a named MovieLens release when
no local copy is given.

The rest of a dataset's life has a module each: the release table
(``releases``), GroupLens copies (``grouplens``), the ratings on dense
indices (``ratings``) and splits (``splits``).
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterable, Mapping

import numpy as np

from trainer_service import formats
from trainer_service.data_root import MAX_FILE_BYTES, FolderReader, Reader
from trainer_service.errors import MovieLensNotFound
from trainer_service.formats import MovieColumns, RatingColumns
from trainer_service.grouplens import GroupLensCopy, open_copy
from trainer_service.movie_facts import read_genre_names
from trainer_service.ratings import Ratings, build_ratings, content_fingerprint
from trainer_service.releases import FILES_100K, ML_100K, Release, release_named

__all__ = ["GROUPLENS_HOST", "items_file_movies", "load_movielens", "load_movielens_100k",
           "load_ratings_files", "ratings_from_tfds"]

GROUPLENS_HOST = ("files.grouplens.org", 443)  # probed before a TFDS download
_TFDS_PROBE_SECONDS = 3.0
_TFDS_BATCH = 1 << 16
GENRE_FILE_100K = "u.genre"  # names u.item's genre flags


def _describe(columns: RatingColumns, movies: MovieColumns) -> str:
    """E.g. "ML-1M/10M format, movies latin-1", naming each file's layout when they differ."""
    ratings_layout, movies_layout = columns.layout, movies.layout
    text = (f"{ratings_layout.family} format" if ratings_layout.family == movies_layout.family
            else f"ratings in {ratings_layout.family} {ratings_layout.name} format, "
                 f"movies in {movies_layout.family} {movies_layout.name} format")
    return text + (f", movies {movies.encoding}" if movies.encoding != "utf-8" else "")


def _load_from_reader(reader: Reader, ratings_path: str, items_path: str, source: str | None = None,
                      grouplens_root: str | None = None, genre_names: tuple[str, ...] | None = None) -> Ratings:
    items_content = reader.read(items_path)
    ratings_content = reader.read(ratings_path)
    fingerprint = content_fingerprint(ratings_content, items_content)
    movies = formats.parse_items(items_content, items_path, genre_names)
    del items_content
    columns = formats.parse_ratings(ratings_content, ratings_path)
    del ratings_content  # the parsed columns keep it only for error messages
    if source is None:
        source = f"{ratings_path} + {items_path} under {reader.description} ({_describe(columns, movies)})"
    return build_ratings(columns, movies, source, fingerprint, grouplens_root)


# --------------------------------------------------------------------------- your files, under the data root


def load_ratings_files(data_root: str, ratings_path: str, items_path: str, max_bytes: int = MAX_FILE_BYTES) -> Ratings:
    """Load ratings and movies in any GroupLens layout, given relative to ``data_root``.

    Each file's layout is recognised from its content, so the two may differ
    and may be named anything. Files over ``max_bytes`` are refused unread.
    """
    return _load_from_reader(FolderReader(data_root, max_bytes), ratings_path, items_path)


def items_file_movies(data_root: str, items_path: str, max_bytes: int = MAX_FILE_BYTES) -> int:
    """Movies in an items file, counted by its lines without parsing it.

    A job asks before it parses the ratings, so a kind that cannot hold the
    catalogue (closed form on a huge one) fails in a second instead of after
    parsing millions of ratings. A quoted title spanning lines would be
    over-counted, which only matters within a line of a kind's bound; the
    training itself checks exactly.
    """
    return formats.count_items(FolderReader(data_root, max_bytes).read(items_path), items_path)


# --------------------------------------------------------------------------- MovieLens releases


def _load_copy(copy: GroupLensCopy) -> Ratings:
    """A GroupLens copy's ratings; an ML-100K copy's genre flags are named by its u.genre when it has one."""
    where = copy.reader.description
    title = copy.release.title if copy.release else f"MovieLens {' + '.join(copy.files)}"
    genre_names = None
    if copy.files == FILES_100K and copy.reader.exists(GENRE_FILE_100K):
        genre_names = read_genre_names(copy.reader.read(GENRE_FILE_100K), GENRE_FILE_100K)
    return _load_from_reader(copy.reader, *copy.files, source=f"{title} ({where})",
                             grouplens_root=where if copy.files == FILES_100K else None, genre_names=genre_names)


def _int_ids(values: object) -> np.ndarray:
    array = np.asarray(values)
    return array.astype(np.int64) if array.dtype.kind in "iu" else array.astype("S").astype(np.int64)


def ratings_from_tfds(batches: Iterable[Mapping[str, object]], release: Release, where: str) -> Ratings:
    """Ratings from TFDS's movielens examples (ids as byte strings), batch by batch.

    Takes the batches as numpy dicts, not the TFDS dataset, so the conversion
    can be tested without TFDS or its download.
    """
    users, movies, values, stamps = [], [], [], []
    title_ids, titles, seen = [], [], np.zeros(0, dtype=np.int64)
    for batch in batches:
        movie = _int_ids(batch["movie_id"])
        users.append(_int_ids(batch["user_id"]))
        movies.append(movie)
        values.append(np.asarray(batch["user_rating"], dtype=np.float32))
        stamps.append(np.asarray(batch["timestamp"], dtype=np.int64))
        ids, first = np.unique(movie, return_index=True)
        new = ~np.isin(ids, seen)
        if new.any():
            title_ids.append(ids[new])
            titles.append(np.asarray(batch["movie_title"], dtype="S")[first[new]])
            seen = np.union1d(seen, ids[new])
    if not users:
        raise MovieLensNotFound(release.not_found(f"the TFDS copy in {where} holds no ratings"))
    movie_ids, movie_titles = np.concatenate(title_ids), np.concatenate(titles)
    order = np.argsort(movie_ids)

    def lines(row: int) -> int:  # TFDS has no lines; the example number stands in
        return row + 1

    columns = RatingColumns(users=np.concatenate(users), movies=np.concatenate(movies),
                            ratings=np.concatenate(values), timestamps=np.concatenate(stamps),
                            name="tfds:ratings", layout=formats.RATINGS_TAB, line=lines)
    catalogue = MovieColumns(movie_ids=movie_ids[order],
                             titles=np.strings.decode(movie_titles[order], "utf-8", "replace"),
                             name="tfds:movies", layout=formats.ITEMS_PIPE, encoding="utf-8", line=lines)
    digest = hashlib.sha256(columns.movies.tobytes() + columns.ratings.tobytes() + columns.timestamps.tobytes())
    return build_ratings(columns, catalogue, f"{release.title} (TFDS {release.tfds_name} in {where})",
                         digest.hexdigest())


def _tfds_movielens(release: Release, local_problem: str = "") -> tuple[Ratings, str]:
    """The TFDS copy of ``release``; only if it is cached or the download host answers quickly."""
    from movierec_common.tfenv import tensorflow  # TF only when needed

    tensorflow()
    import tensorflow_datasets as tfds

    builder = tfds.builder(release.tfds_name)
    if not builder.is_prepared():
        why = f"{local_problem}; " if local_problem else "no local copy given and "
        try:
            socket.create_connection(GROUPLENS_HOST, timeout=_TFDS_PROBE_SECONDS).close()
        except OSError as error:
            raise MovieLensNotFound(release.not_found(
                f"{why}{GROUPLENS_HOST[0]} is unreachable for a TFDS download ({error})")) from None
        try:
            builder.download_and_prepare()
        except Exception as error:  # any download failure means "not found"
            raise MovieLensNotFound(release.not_found(f"{why}the TFDS download failed ({error})")) from None
    keys = ("user_id", "movie_id", "user_rating", "timestamp", "movie_title")
    dataset = builder.as_dataset(split="train", batch_size=_TFDS_BATCH).map(lambda e: {k: e[k] for k in keys})
    return ratings_from_tfds(tfds.as_numpy(dataset), release, str(builder.data_dir)), str(builder.data_dir)


def load_movielens(name: str = "", movielens_dir: str | None = None, *,
                   max_bytes: int = MAX_FILE_BYTES) -> tuple[Ratings, str]:
    """Load a MovieLens release; returns the ratings and where they came from.

    ``name`` is one of ``releases.DATASET_NAMES`` (e.g. ``movielens/1m-ratings``).
    A GroupLens folder or zip given as ``movielens_dir`` or ``MOVIELENS_DIR``
    is used when it holds that release, and TFDS otherwise. Without a name,
    whatever release the folder or zip holds is loaded, and MovieLens 100K
    from TFDS when none is given.
    """
    wanted = release_named(name) if name else None
    path = movielens_dir or os.environ.get("MOVIELENS_DIR")
    problem = ""
    if path:
        try:
            copy = open_copy(path, wanted or ML_100K, max_bytes)
        except MovieLensNotFound:
            if wanted is None:
                raise
            problem = f"{path!r} holds no MovieLens files"
        else:
            if wanted is None or copy.release is wanted:
                return _load_copy(copy), copy.reader.description
            problem = f"{path!r} holds {copy.describe()}, not {wanted.title}"
    return _tfds_movielens(wanted or ML_100K, problem)


def load_movielens_100k(movielens_dir: str | None = None) -> tuple[Ratings, str]:
    """The original entry point: a GroupLens copy given here or in ``MOVIELENS_DIR``, else TFDS's 100K."""
    return load_movielens("", movielens_dir)
