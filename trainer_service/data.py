"""Loading MovieLens-style ratings and splitting them for training and evaluation.

Everything downstream (models, metrics, serving) works on dense integer indices,
so the raw ids are mapped once here and kept alongside for translating back.

The GroupLens files are parsed here (see ``formats``) rather than through
``tensorflow_datasets.structured.movielens_parsing``: that parser assumes fixed
file names inside a folder, reports a short line as an ``IndexError`` without
a line number, and goes through TensorFlow's file layer. Paths here come from
remote requests, so they must be confined to a data root and every malformed
line must produce a message a person can act on. TFDS is only the last resort
for a named MovieLens release when no local copy is given.

Memory matters at ML-25M's size (25 million ratings): ids are mapped with
numpy lookups and sorts rather than dictionaries, and each raw column is
dropped as soon as its dense form exists.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from movierec.v1.vocabulary import HOLDOUTS, PREDEFINED_SPLITS
from trainer_service import formats
from trainer_service.formats import Catalogue, DatasetError, RatingColumns

# Large enough for ML-25M's ratings.csv (about 680 MB); the trainer's
# --max-dataset-bytes lowers or raises it.
MAX_FILE_BYTES = 2 * 1024 ** 3
GROUPLENS_HOST = ("files.grouplens.org", 443)  # probed before a TFDS download
_TFDS_PROBE_SECONDS = 3.0
_TFDS_BATCH = 1 << 16


class DatasetPathError(DatasetError):
    """A path that leaves the data root or does not exist.

    Separate from :class:`DatasetError` so servers can treat it as a
    permission/argument problem rather than bad file content.
    """


class MovieLensNotFound(DatasetError):
    """The MovieLens release asked for is not available locally and cannot be fetched."""


# --------------------------------------------------------------------------- releases


@dataclass(frozen=True)
class Release:
    """A MovieLens release as GroupLens distributes it."""

    key: str                # the zip's name, e.g. "ml-1m"
    title: str
    files: tuple[str, str]  # ratings and movies file names
    tfds_name: str = ""     # tensorflow-datasets config, when TFDS has it
    movies: int = 0         # catalogue size as published (0: changes between copies), for refusing early

    @property
    def url(self) -> str:
        return f"https://files.grouplens.org/datasets/movielens/{self.key}.zip"


_100K_FILES, _DAT_FILES, _CSV_FILES = ("u.data", "u.item"), ("ratings.dat", "movies.dat"), ("ratings.csv", "movies.csv")
ML_100K = Release("ml-100k", "MovieLens 100K", _100K_FILES, "movielens/100k-ratings", 1_682)
RELEASES = (
    ML_100K,
    Release("ml-1m", "MovieLens 1M", _DAT_FILES, "movielens/1m-ratings", 3_883),
    Release("ml-10m", "MovieLens 10M", _DAT_FILES, "", 10_681),
    Release("ml-20m", "MovieLens 20M", _CSV_FILES, "movielens/20m-ratings", 27_278),
    Release("ml-25m", "MovieLens 25M", _CSV_FILES, "movielens/25m-ratings", 62_423),
    Release("ml-latest-small", "MovieLens latest (small)", _CSV_FILES, "movielens/latest-small-ratings", 9_742),
    Release("ml-latest", "MovieLens latest", _CSV_FILES),
)
# What a TrainRequest's dataset.name may ask for.
DATASET_NAMES = tuple(release.tfds_name for release in RELEASES if release.tfds_name)
_RELEASE_IN_TEXT = re.compile(r"ml-(100k|10m|1m|20m|25m|latest-small|latest)", re.IGNORECASE)


def release_named(name: str) -> Release:
    """The release a dataset name asks for; ``DatasetError`` lists the valid names."""
    for release in RELEASES:
        if release.tfds_name and release.tfds_name == name:
            return release
    raise DatasetError(f"unknown dataset name {name[:80]!r}; choose one of: {', '.join(DATASET_NAMES)}")


def _not_found_message(release: Release, detail: str) -> str:
    return (
        f"{release.title} not found: {detail}. Download {release.url}, unzip it "
        f"(or keep the {release.key}.zip), and pass the folder or zip path with "
        "--movielens-dir or set the MOVIELENS_DIR environment variable."
    )


# --------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Ratings:
    """All ratings of one dataset, with users and items re-indexed densely."""

    user_ids: np.ndarray
    movie_ids: np.ndarray
    titles: np.ndarray
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    source: str
    fingerprint: str
    # Folder or zip of a GroupLens MovieLens 100K copy, when the data came from
    # one; predefined splits (ua, u1, ...) can only be read from there.
    grouplens_root: str | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.movie_ids)

    def __len__(self) -> int:
        return len(self.users)


def _csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((items, users))
    counts = np.bincount(users, minlength=n_users)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, items[order].astype(np.int32)


def time_order_key(data: Ratings, positions: np.ndarray) -> np.ndarray:
    """Sort key of ratings in time: the timestamp, ties broken by position in the file.

    MovieLens 100K rates many films within the same second, so the position
    decides their order; the same rule orders histories and the
    ``last_n_per_user`` holdout.
    """
    return data.timestamps[positions].astype(np.float64) + positions / (len(data) + 1.0)


def time_ordered_history(data: Ratings, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, items, timestamps): each user's ratings among ``positions``, oldest first."""
    positions = np.asarray(positions, dtype=np.int64)
    users = data.users[positions]
    order = np.lexsort((time_order_key(data, positions), users))
    indptr = np.zeros(data.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=data.n_users), out=indptr[1:])
    ordered = positions[order]
    return indptr, data.items[ordered].astype(np.int32), data.timestamps[ordered].astype(np.int64)


@dataclass(frozen=True)
class Split:
    """Indices of the training and held-out ratings of one dataset."""

    data: Ratings
    train: np.ndarray  # sorted int64 indices into data's rating arrays
    test: np.ndarray
    name: str
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def train_csr(self) -> tuple[np.ndarray, np.ndarray]:
        if "train" not in self._cache:
            self._cache["train"] = _csr(self.data.users[self.train], self.data.items[self.train], self.data.n_users)
        return self._cache["train"]

    def test_csr(self) -> tuple[np.ndarray, np.ndarray]:
        if "test" not in self._cache:
            self._cache["test"] = _csr(self.data.users[self.test], self.data.items[self.test], self.data.n_users)
        return self._cache["test"]


# --------------------------------------------------------------------------- reading


class _FolderReader:
    """Reads files under a root, refusing anything that resolves outside it."""

    def __init__(self, root: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES):
        root_path = Path(root)
        if not root_path.is_dir():
            raise DatasetPathError(f"data root {str(root)!r} is not an existing folder")
        self.root = root_path.resolve()
        self.description = str(self.root)
        self.names = (self.root.name,)  # hints at which release this is
        self.max_bytes = max_bytes

    def resolve(self, relative: str) -> Path:
        if not relative:
            raise DatasetPathError("empty file path")
        candidate = Path(relative)
        if candidate.is_absolute() or PurePosixPath(relative).is_absolute():
            raise DatasetPathError(f"{relative!r}: absolute paths are not allowed; "
                                   "give a path relative to the data root")
        if ".." in candidate.parts or ".." in PurePosixPath(relative).parts:
            raise DatasetPathError(f"{relative!r}: '..' is not allowed in data paths")
        if "\x00" in relative:
            raise DatasetPathError("file paths may not contain NUL characters")
        try:
            resolved = (self.root / candidate).resolve()
            if not resolved.is_relative_to(self.root):
                raise DatasetPathError(f"{relative!r} resolves to {str(resolved)!r}, "
                                       f"outside the data root {str(self.root)!r}")
            if not resolved.is_file():
                raise DatasetPathError(f"{relative!r}: no such file under the data root {str(self.root)!r}")
        except (OSError, RuntimeError, ValueError) as exc:  # name too long, symlink loop, ...
            if isinstance(exc, DatasetPathError):
                raise
            raise DatasetPathError(f"{relative[:120]!r}: cannot be opened under the data root ({type(exc).__name__}: "
                                   f"{getattr(exc, 'strerror', None) or exc})"[:500]) from exc
        return resolved

    def exists(self, relative: str) -> bool:
        try:
            self.resolve(relative)
        except DatasetPathError:
            return False
        return True

    def read(self, relative: str) -> bytes:
        path = self.resolve(relative)
        size = path.stat().st_size
        if size > self.max_bytes:
            raise DatasetError(f"{relative}: file is {size} bytes, over the {self.max_bytes}-byte limit")
        with open(path, "rb") as handle:
            content = handle.read(self.max_bytes + 1)
        if len(content) > self.max_bytes:  # grew while reading
            raise DatasetError(f"{relative}: file is over the {self.max_bytes}-byte limit")
        return content


class _ZipReader:
    """Reads a GroupLens zip as distributed, without unpacking it.

    Members may sit under one top folder of any name (``ml-100k/``,
    ``ml-10M100K/``, ``ml-25m/``) or at the top.
    """

    def __init__(self, path: Path, max_bytes: int = MAX_FILE_BYTES):
        self.path = path.resolve()
        self.description = str(self.path)
        self.max_bytes = max_bytes
        try:
            with zipfile.ZipFile(self.path) as archive:
                self._members = {info.filename: info for info in archive.infolist() if not info.is_dir()}
        except (zipfile.BadZipFile, OSError) as error:
            raise DatasetError(f"{path}: not a readable zip file ({error})") from error
        self._tops = sorted({name.split("/", 1)[0] for name in self._members if "/" in name})
        self.names = (self.path.stem, *self._tops)

    def _member(self, relative: str) -> zipfile.ZipInfo | None:
        for name in (relative, *(f"{top}/{relative}" for top in self._tops)):
            if name in self._members:
                return self._members[name]
        return None

    def exists(self, relative: str) -> bool:
        return self._member(relative) is not None

    def read(self, relative: str) -> bytes:
        info = self._member(relative)
        if info is None:
            raise DatasetPathError(f"{relative!r}: not in {self.path}")
        if info.file_size > self.max_bytes:
            raise DatasetError(f"{self.path}:{relative}: {info.file_size} bytes, over the {self.max_bytes}-byte limit")
        with zipfile.ZipFile(self.path) as archive, archive.open(info) as handle:
            content = handle.read(self.max_bytes + 1)
        if len(content) > self.max_bytes:
            raise DatasetError(f"{self.path}:{relative}: over the {self.max_bytes}-byte limit")
        return content


# --------------------------------------------------------------------------- building


def _dense_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and each value's int32 index among them.

    Ids that are small non-negative integers (every MovieLens release) take a
    lookup table, linear time; anything else takes a sort. The bound keeps the
    table (5 bytes per possible id) far below the ratings' own size.
    """
    if len(values) and values.min() >= 0 and values.max() < min(4 * len(values) + (1 << 20), 1 << 26):
        present = np.zeros(int(values.max()) + 1, dtype=bool)
        present[values] = True
        index = np.cumsum(present, dtype=np.int32) - 1
        return np.flatnonzero(present).astype(np.int64), index[values]
    order = np.argsort(values, kind="stable")  # timsort: fast on files grouped by user
    ordered = values[order]
    starts = np.concatenate([[True], ordered[1:] != ordered[:-1]]) if len(values) else np.zeros(0, dtype=bool)
    codes = np.empty(len(values), dtype=np.int32)
    codes[order] = np.cumsum(starts, dtype=np.int32) - 1
    return ordered[starts], codes


def _lookup(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """int32 position of each query in ``keys`` (distinct), -1 where absent."""
    if len(keys) and keys.min() >= 0 and keys.max() < 16 * len(keys) + (1 << 22):
        table = np.full(int(keys.max()) + 2, -1, dtype=np.int32)  # the last slot answers out-of-range queries
        table[keys] = np.arange(len(keys), dtype=np.int32)
        return table[np.clip(queries, -1, len(table) - 1)]
    order = np.argsort(keys)
    slots = np.minimum(np.searchsorted(keys[order], queries), len(keys) - 1)
    return np.where(keys[order][slots] == queries, order[slots], -1).astype(np.int32)


def _pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    keys = users.astype(np.int64)
    keys *= n_items  # in place: at 25 million ratings each temporary costs 200 MB
    keys += items
    return keys


def _first_repeat(make_keys: Callable[[], np.ndarray]) -> tuple[int, int] | None:
    """(row, earlier row) of the first row, in file order, whose key appeared before.

    The keys are made twice rather than kept, since the second time (with the
    sort that finds the row) only happens for a file that is being refused.
    A stable sort (timsort) merges runs, and GroupLens files list each user's
    ratings together, so it is about twice as fast here as numpy's quicksort.
    """
    ordered = make_keys()
    ordered.sort(kind="stable")
    if not (ordered[1:] == ordered[:-1]).any():
        return None
    del ordered
    keys = make_keys()
    order = np.argsort(keys, kind="stable")
    repeats = keys[order[1:]] == keys[order[:-1]]
    row = int(order[1:][repeats].min())
    return row, int(np.flatnonzero(keys == keys[row])[0])


def _id_strings(ids: np.ndarray) -> np.ndarray:
    """Ids as the shortest fixed-width strings numpy offers (users are keyed by string)."""
    texts = ids.astype(str)
    return texts.astype(f"<U{max(1, int(np.strings.str_len(texts).max(initial=1)))}")


def _build_ratings(columns: RatingColumns, catalogue: Catalogue, source: str, fingerprint: str,
                   grouplens_root: str | None = None) -> Ratings:
    """Dense indices for users (numeric order) and items (catalogue order), with the cross-file checks."""
    items = _lookup(catalogue.movie_ids, columns.movies)
    unknown = items < 0
    if unknown.any():
        row = int(np.argmax(unknown))
        raise DatasetError(f"{columns.name}:{columns.line(row)}: movie id {columns.movies[row]} is not defined "
                           f"in {catalogue.name}")
    del unknown
    user_ids, users = _dense_codes(columns.users)
    repeat = _first_repeat(lambda: _pair_keys(users, items, len(catalogue)))
    if repeat is not None:
        row, earlier = repeat
        raise DatasetError(f"{columns.name}:{columns.line(row)}: user {columns.users[row]} already rated movie "
                           f"{columns.movies[row]} on line {columns.line(earlier)}")
    return Ratings(
        user_ids=_id_strings(user_ids),
        movie_ids=catalogue.movie_ids,
        titles=catalogue.titles,
        users=users,
        items=items,
        ratings=columns.ratings,
        timestamps=columns.timestamps,
        source=source,
        fingerprint=fingerprint,
        grouplens_root=grouplens_root,
    )


def _fingerprint(*contents: bytes) -> str:
    digest = hashlib.sha256()
    for content in contents:
        digest.update(len(content).to_bytes(8, "little"))
        digest.update(content)
    return digest.hexdigest()


def _describe(columns: RatingColumns, catalogue: Catalogue) -> str:
    """E.g. "ML-1M/10M format, movies latin-1", naming each file's layout when they differ."""
    ratings, movies = columns.layout, catalogue.layout
    text = (f"{ratings.family} format" if ratings.family == movies.family
            else f"ratings in {ratings.family} {ratings.name} format, movies in {movies.family} {movies.name} format")
    return text + (f", movies {catalogue.encoding}" if catalogue.encoding != "utf-8" else "")


def _load_from_reader(reader, ratings_path: str, items_path: str, source: str | None = None,
                      grouplens_root: str | None = None) -> Ratings:
    items_content = reader.read(items_path)
    ratings_content = reader.read(ratings_path)
    fingerprint = _fingerprint(ratings_content, items_content)
    catalogue = formats.parse_items(items_content, items_path)
    del items_content
    columns = formats.parse_ratings(ratings_content, ratings_path)
    del ratings_content  # the parsed columns keep it only for error messages
    if source is None:
        source = f"{ratings_path} + {items_path} under {reader.description} ({_describe(columns, catalogue)})"
    return _build_ratings(columns, catalogue, source, fingerprint, grouplens_root)


def load_ratings_files(data_root: str, ratings_path: str, items_path: str, max_bytes: int = MAX_FILE_BYTES) -> Ratings:
    """Load ratings and movies in any GroupLens layout, given relative to ``data_root``.

    Each file's layout is recognised from its content, so the two may differ
    and may be named anything. Files over ``max_bytes`` are refused unread.
    """
    return _load_from_reader(_FolderReader(data_root, max_bytes), ratings_path, items_path)


def check_dataset_files(data_root: str, *relative_paths: str, max_bytes: int = MAX_FILE_BYTES) -> None:
    """Refuses paths that leave ``data_root`` or name no file, and files over ``max_bytes``, reading none.

    What the Train call may check on its request thread: a few ``stat``
    calls. The content is parsed by the job (see :func:`load_ratings_files`),
    whose failure names the file and line.
    """
    reader = _FolderReader(data_root, max_bytes)
    for relative in relative_paths:
        size = reader.resolve(relative).stat().st_size
        if size > max_bytes:
            raise DatasetError(f"{relative}: file is {size} bytes, over the {max_bytes}-byte limit")


def items_file_movies(data_root: str, items_path: str, max_bytes: int = MAX_FILE_BYTES) -> int:
    """Movies in an items file, counted by its lines without parsing it.

    A job asks before it parses the ratings, so a kind that cannot hold the
    catalogue (closed form on a huge one) fails in a second instead of after
    parsing millions of ratings. A quoted title spanning lines would be
    over-counted, which only matters within a line of a kind's bound; the
    training itself checks exactly.
    """
    return formats.count_items(_FolderReader(data_root, max_bytes).read(items_path), items_path)


# --------------------------------------------------------------------------- GroupLens copies


@dataclass(frozen=True)
class _Copy:
    """A GroupLens folder or zip: where its files are, and which release it holds (None: unknown)."""

    reader: _FolderReader | _ZipReader
    files: tuple[str, str]
    release: Release | None

    def describe(self) -> str:
        return self.release.title if self.release else f"{' + '.join(self.files)} of an unrecognised release"


def _readme_text(reader) -> str:
    for name in ("README.txt", "README", "README.html"):
        if reader.exists(name):
            try:
                return reader.read(name)[:1 << 16].decode("latin-1")
            except DatasetError:
                return ""
    return ""


def _identify(reader, files: tuple[str, str]) -> Release | None:
    """Which release a copy holds: by its file layout, folder or zip names, then README."""
    if files == _100K_FILES:
        return ML_100K
    candidates = {release.key: release for release in RELEASES if release.files == files}
    for text in (*reader.names, _readme_text(reader)):
        for match in _RELEASE_IN_TEXT.finditer(text):
            key = f"ml-{match.group(1).lower()}"
            if key in candidates:
                return candidates[key]
    if files == _DAT_FILES:  # ML-1M ships users.dat, ML-10M tags.dat
        return candidates["ml-1m"] if reader.exists("users.dat") else (
            candidates["ml-10m"] if reader.exists("tags.dat") else None)
    return None


def _open_copy(path: str, wanted: Release, max_bytes: int) -> _Copy:
    candidate = Path(path).expanduser()
    if candidate.is_file() and zipfile.is_zipfile(candidate):
        reader = _ZipReader(candidate, max_bytes)
    elif candidate.is_dir():
        reader = _FolderReader(candidate, max_bytes)
    else:
        raise MovieLensNotFound(_not_found_message(wanted, f"{path!r} is neither a folder nor a zip file"))
    for files in (_100K_FILES, _DAT_FILES, _CSV_FILES):
        if all(reader.exists(name) for name in files):
            return _Copy(reader, files, _identify(reader, files))
    raise MovieLensNotFound(_not_found_message(
        wanted, f"{path!r} has no u.data and u.item, ratings.dat and movies.dat, or ratings.csv and movies.csv"))


def _load_copy(copy: _Copy) -> Ratings:
    where = copy.reader.description
    title = copy.release.title if copy.release else f"MovieLens {' + '.join(copy.files)}"
    return _load_from_reader(copy.reader, *copy.files, source=f"{title} ({where})",
                             grouplens_root=where if copy.files == _100K_FILES else None)


def _int_ids(values) -> np.ndarray:
    values = np.asarray(values)
    return values.astype(np.int64) if values.dtype.kind in "iu" else values.astype("S").astype(np.int64)


def ratings_from_tfds(batches, release: Release, where: str) -> Ratings:
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
        raise MovieLensNotFound(_not_found_message(release, f"the TFDS copy in {where} holds no ratings"))
    movie_ids, movie_titles = np.concatenate(title_ids), np.concatenate(titles)
    order = np.argsort(movie_ids)
    lines = lambda row: row + 1  # noqa: E731 - TFDS has no lines; the example number stands in
    columns = RatingColumns(users=np.concatenate(users), movies=np.concatenate(movies),
                            ratings=np.concatenate(values), timestamps=np.concatenate(stamps),
                            name="tfds:ratings", layout=formats.RATINGS_TAB, line=lines)
    catalogue = Catalogue(movie_ids=movie_ids[order], titles=np.strings.decode(movie_titles[order], "utf-8", "replace"),
                          name="tfds:movies", layout=formats.ITEMS_PIPE, encoding="utf-8", line=lines)
    digest = hashlib.sha256(columns.movies.tobytes() + columns.ratings.tobytes() + columns.timestamps.tobytes())
    return _build_ratings(columns, catalogue, f"{release.title} (TFDS {release.tfds_name} in {where})",
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
            raise MovieLensNotFound(_not_found_message(
                release, f"{why}{GROUPLENS_HOST[0]} is unreachable for a TFDS download ({error})")) from None
        try:
            builder.download_and_prepare()
        except Exception as error:  # any download failure means "not found"
            raise MovieLensNotFound(_not_found_message(release, f"{why}the TFDS download failed ({error})")) from None
    keys = ("user_id", "movie_id", "user_rating", "timestamp", "movie_title")
    dataset = builder.as_dataset(split="train", batch_size=_TFDS_BATCH).map(lambda e: {k: e[k] for k in keys})
    return ratings_from_tfds(tfds.as_numpy(dataset), release, str(builder.data_dir)), str(builder.data_dir)


def load_movielens(name: str = "", movielens_dir: str | None = None, *,
                   max_bytes: int = MAX_FILE_BYTES) -> tuple[Ratings, str]:
    """Load a MovieLens release; returns the ratings and where they came from.

    ``name`` is one of ``DATASET_NAMES`` (e.g. ``movielens/1m-ratings``).
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
            copy = _open_copy(path, wanted or ML_100K, max_bytes)
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


# --------------------------------------------------------------------------- splits


def _per_user_holdout(users: np.ndarray, order_key: np.ndarray, size: int) -> np.ndarray:
    """Boolean mask holding out the last ``size`` ratings per user in ``order_key`` order.

    At most ``count - 1`` are held out so every user keeps a training rating.
    """
    order = np.lexsort((order_key, users))
    sorted_users = users[order]
    counts = np.bincount(sorted_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_from_end = counts[sorted_users] - (np.arange(len(order)) - starts[sorted_users])  # 1 = last
    take = np.minimum(size, counts - 1)
    mask = np.zeros(len(users), dtype=bool)
    mask[order[rank_from_end <= take[sorted_users]]] = True
    return mask


def holdout_mask(users: np.ndarray, timestamps: np.ndarray, holdout: str, size: int, seed: int) -> np.ndarray:
    """Mask of held-out positions for the "random" and "last_n_per_user" strategies."""
    if size < 1:
        raise DatasetError(f"holdout size must be >= 1, got {size}")
    if holdout == "random":
        key = np.random.default_rng(seed).random(len(users))
    elif holdout == "last_n_per_user":
        # Ties in time are broken by position so the split is deterministic
        # (the rule of time_order_key).
        key = timestamps.astype(np.float64) + np.arange(len(users)) / (len(users) + 1.0)
    else:
        raise DatasetError(f"unknown holdout {holdout!r}; expected one of {', '.join(HOLDOUTS)}")
    return _per_user_holdout(users, key, size)


def _split_positions(data: Ratings, columns: RatingColumns, pair_order: np.ndarray,
                     pair_keys: np.ndarray) -> np.ndarray:
    """Positions in ``data`` of each rating a GroupLens split file lists."""
    users = _lookup(data.user_ids.astype(np.int64), columns.users)
    items = _lookup(data.movie_ids, columns.movies)
    missing = (users < 0) | (items < 0)
    if missing.any():
        row = int(np.argmax(missing))
        raise DatasetError(f"{columns.name}:{columns.line(row)}: user {columns.users[row]} / movie "
                           f"{columns.movies[row]} is not in the loaded ratings")
    keys = _pair_keys(users, items, data.n_items)
    slots = np.minimum(np.searchsorted(pair_keys, keys), len(pair_keys) - 1)
    unrated = pair_keys[slots] != keys
    if unrated.any():
        row = int(np.argmax(unrated))
        raise DatasetError(f"{columns.name}:{columns.line(row)}: user {columns.users[row]} never rated movie "
                           f"{columns.movies[row]} in the loaded ratings")
    return pair_order[slots]


def _predefined_split(data: Ratings, name: str, movielens_dir: str | None) -> Split:
    root = movielens_dir or data.grouplens_root
    if root is None:
        raise DatasetError(
            f"holdout {name!r} is a GroupLens predefined split; it needs MovieLens 100K loaded from a "
            f"GroupLens folder or ml-100k.zip, but the data came from {data.source}"
        )
    reader = _open_copy(root, ML_100K, MAX_FILE_BYTES).reader
    all_keys = _pair_keys(data.users, data.items, data.n_items)
    pair_order = np.argsort(all_keys)
    pair_keys = all_keys[pair_order]
    parts, listed = {}, []
    for suffix in ("base", "test"):
        file_name = f"{name}.{suffix}"
        if not reader.exists(file_name):
            raise DatasetError(f"predefined split {name!r}: {file_name} is missing from {reader.description}")
        columns = formats.parse_ratings(reader.read(file_name), file_name)
        positions = _split_positions(data, columns, pair_order, pair_keys)
        listed.append((columns, positions))
        parts[suffix] = np.sort(positions.astype(np.int64))
    both = np.concatenate([positions for _, positions in listed])
    repeat = _first_repeat(both.copy)
    if repeat is not None:
        (base, base_positions), (test, _) = listed
        row, earlier = repeat
        where = lambda r: (f"{base.name}:{base.line(r)}" if r < len(base_positions)  # noqa: E731
                           else f"{test.name}:{test.line(r - len(base_positions))}")
        raise DatasetError(f"{where(row)}: rating also listed in {where(earlier)}")
    return Split(data=data, train=parts["base"], test=parts["test"], name=f"{name}.base -> {name}.test")


def make_split(data: Ratings, holdout: str, holdout_size: int, seed: int, movielens_dir: str | None = None) -> Split:
    """Split ratings into train and test; see ``HOLDOUTS`` for the strategies."""
    if holdout in PREDEFINED_SPLITS:
        return _predefined_split(data, holdout, movielens_dir)
    mask = holdout_mask(data.users, data.timestamps, holdout, holdout_size, seed)
    if holdout == "random":
        name = f"random {holdout_size} per user (seed {seed})"
    else:
        name = f"last {holdout_size} per user by timestamp"
    return Split(data=data, train=np.flatnonzero(~mask), test=np.flatnonzero(mask), name=name)


def carve_validation(split: Split, size: int, seed: int, by_time: bool = False) -> Split:
    """A split of ``split``'s training ratings only, for early stopping and model selection.

    The held-out test set is never looked at, so choices made on this split do
    not leak into the reported metrics. ``by_time`` holds out each user's
    newest ``size`` training ratings instead of random ones, for kinds whose
    settings are about what comes next.
    """
    train = split.train
    holdout = "last_n_per_user" if by_time else "random"
    mask = holdout_mask(split.data.users[train], split.data.timestamps[train], holdout, size, seed)
    how = f"newest {size}" if by_time else f"random {size}"
    return Split(
        data=split.data, train=train[~mask], test=train[mask],
        name=f"validation: {how} per user of {split.name} train" + ("" if by_time else f" (seed {seed})"),
    )
