"""Loading MovieLens-style ratings and splitting them for training and evaluation.

Everything downstream (models, metrics, serving) works on dense integer indices,
so the raw ids are mapped once here and kept alongside for translating back.

The GroupLens files are parsed by hand rather than through
``tensorflow_datasets.structured.movielens_parsing``: that parser assumes fixed
file names inside a folder, silently skips no errors (a short line raises an
``IndexError`` without a line number) and needs TensorFlow's file layer. Paths
here come from remote requests, so they must be confined to a data root and
every malformed line must produce a message a person can act on.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

MOVIELENS_100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
MAX_FILE_BYTES = 200 * 1024 * 1024
PREDEFINED_SPLITS = ("ua", "ub", "u1", "u2", "u3", "u4", "u5")
HOLDOUTS = ("random", "last_n_per_user") + PREDEFINED_SPLITS
_ITEM_FIELDS = 24  # id | title | release | video release | IMDb URL | 19 genre flags
_TFDS_PROBE_SECONDS = 3.0


class DatasetError(ValueError):
    """Data that cannot be used; the message names the file, line and problem."""


class DatasetPathError(DatasetError):
    """A path that leaves the data root or does not exist.

    Separate from :class:`DatasetError` so servers can treat it as a
    permission/argument problem rather than bad file content.
    """


class MovieLensNotFound(DatasetError):
    """MovieLens 100K is not available locally and cannot be fetched."""


def _not_found_message(detail: str) -> str:
    return (
        f"MovieLens 100K not found: {detail}. Download {MOVIELENS_100K_URL}, unzip it "
        "(or keep the ml-100k.zip), and pass the folder or zip path with "
        "--movielens-dir or set the MOVIELENS_DIR environment variable."
    )


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

    def __init__(self, root: str | os.PathLike):
        root_path = Path(root)
        if not root_path.is_dir():
            raise DatasetPathError(f"data root {str(root)!r} is not an existing folder")
        self.root = root_path.resolve()
        self.description = str(self.root)

    def resolve(self, relative: str) -> Path:
        if not relative:
            raise DatasetPathError("empty file path")
        candidate = Path(relative)
        if candidate.is_absolute() or PurePosixPath(relative).is_absolute():
            raise DatasetPathError(f"{relative!r}: absolute paths are not allowed; give a path relative to the data root")
        if ".." in candidate.parts or ".." in PurePosixPath(relative).parts:
            raise DatasetPathError(f"{relative!r}: '..' is not allowed in data paths")
        if "\x00" in relative:
            raise DatasetPathError("file paths may not contain NUL characters")
        try:
            resolved = (self.root / candidate).resolve()
            if not resolved.is_relative_to(self.root):
                raise DatasetPathError(f"{relative!r} resolves to {str(resolved)!r}, outside the data root {str(self.root)!r}")
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
        if size > MAX_FILE_BYTES:
            raise DatasetError(f"{relative}: file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
        with open(path, "rb") as handle:
            content = handle.read(MAX_FILE_BYTES + 1)
        if len(content) > MAX_FILE_BYTES:  # grew while reading
            raise DatasetError(f"{relative}: file is over the {MAX_FILE_BYTES}-byte limit")
        return content


class _ZipReader:
    """Reads ml-100k.zip as distributed (members under ``ml-100k/``) without unpacking."""

    def __init__(self, path: Path):
        self.path = path.resolve()
        self.description = str(self.path)
        try:
            with zipfile.ZipFile(self.path) as archive:
                self._members = {info.filename: info for info in archive.infolist()}
        except (zipfile.BadZipFile, OSError) as error:
            raise DatasetError(f"{path}: not a readable zip file ({error})") from error

    def _member(self, relative: str) -> zipfile.ZipInfo | None:
        for name in (f"ml-100k/{relative}", relative):
            if name in self._members:
                return self._members[name]
        return None

    def exists(self, relative: str) -> bool:
        return self._member(relative) is not None

    def read(self, relative: str) -> bytes:
        info = self._member(relative)
        if info is None:
            raise DatasetPathError(f"{relative!r}: not in {self.path}")
        if info.file_size > MAX_FILE_BYTES:
            raise DatasetError(f"{self.path}:{relative}: {info.file_size} bytes, over the {MAX_FILE_BYTES}-byte limit")
        with zipfile.ZipFile(self.path) as archive, archive.open(info) as handle:
            content = handle.read(MAX_FILE_BYTES + 1)
        if len(content) > MAX_FILE_BYTES:
            raise DatasetError(f"{self.path}:{relative}: over the {MAX_FILE_BYTES}-byte limit")
        return content


def _lines(content: bytes, name: str, encoding: str):
    """Yield (line number, text) of non-blank lines, failing on undecodable bytes."""
    if not content.strip():
        raise DatasetError(f"{name}: file is empty")
    for number, raw in enumerate(content.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        if b"\x00" in raw:
            raise DatasetError(f"{name}:{number}: contains NUL bytes; is this a binary file?")
        try:
            yield number, raw.decode(encoding)
        except UnicodeDecodeError as error:
            raise DatasetError(
                f"{name}:{number}: byte {raw[error.start]:#04x} at column {error.start + 1} is not valid {encoding}"
            ) from None


def _parse_int(text: str, name: str, number: int, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DatasetError(f"{name}:{number}: {what} {text!r} is not an integer") from None


def _parse_items(content: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    movie_ids: list[int] = []
    titles: list[str] = []
    seen: dict[int, int] = {}
    for number, line in _lines(content, name, "latin-1"):
        fields = line.split("|")
        if len(fields) != _ITEM_FIELDS:
            raise DatasetError(
                f"{name}:{number}: expected {_ITEM_FIELDS} '|'-separated fields "
                f"(movie id|title|release date|video release date|IMDb URL|19 genre flags), found {len(fields)}"
            )
        movie_id = _parse_int(fields[0], name, number, "movie id")
        if movie_id in seen:
            raise DatasetError(f"{name}:{number}: movie id {movie_id} already defined on line {seen[movie_id]}")
        seen[movie_id] = number
        movie_ids.append(movie_id)
        titles.append(fields[1])
    return np.asarray(movie_ids, dtype=np.int64), np.asarray(titles, dtype=str)


def _parse_ratings(content: bytes, name: str):
    rows: list[tuple[str, int, float, int, int]] = []
    for number, line in _lines(content, name, "utf-8"):
        fields = line.split("\t")
        if len(fields) != 4:
            raise DatasetError(
                f"{name}:{number}: expected 4 tab-separated fields (user id, movie id, rating, timestamp), found {len(fields)}"
            )
        user = str(_parse_int(fields[0], name, number, "user id"))
        movie = _parse_int(fields[1], name, number, "movie id")
        try:
            rating = float(fields[2])
        except ValueError:
            raise DatasetError(f"{name}:{number}: rating {fields[2]!r} is not a number") from None
        if not np.isfinite(rating):
            raise DatasetError(f"{name}:{number}: rating {fields[2]!r} is not finite")
        timestamp = _parse_int(fields[3], name, number, "timestamp")
        rows.append((user, movie, rating, timestamp, number))
    return rows


def _build_ratings(rows, movie_ids, titles, ratings_name, items_name, source, fingerprint, grouplens_root=None) -> Ratings:
    item_index = {int(movie): index for index, movie in enumerate(movie_ids)}
    raw_users = sorted({row[0] for row in rows}, key=int)
    user_index = {user: index for index, user in enumerate(raw_users)}
    n = len(rows)
    users = np.empty(n, dtype=np.int32)
    items = np.empty(n, dtype=np.int32)
    values = np.empty(n, dtype=np.float32)
    stamps = np.empty(n, dtype=np.int64)
    seen_pairs: dict[tuple[int, int], int] = {}
    for position, (user, movie, rating, timestamp, number) in enumerate(rows):
        if movie not in item_index:
            raise DatasetError(f"{ratings_name}:{number}: movie id {movie} is not defined in {items_name}")
        pair = (user_index[user], item_index[movie])
        if pair in seen_pairs:
            raise DatasetError(
                f"{ratings_name}:{number}: user {user} already rated movie {movie} on line {seen_pairs[pair]}"
            )
        seen_pairs[pair] = number
        users[position], items[position] = pair
        values[position] = rating
        stamps[position] = timestamp
    return Ratings(
        user_ids=np.asarray(raw_users, dtype=str),
        movie_ids=movie_ids,
        titles=titles,
        users=users,
        items=items,
        ratings=values,
        timestamps=stamps,
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


def _load_from_reader(reader, ratings_path: str, items_path: str, source: str, grouplens_root=None) -> Ratings:
    items_content = reader.read(items_path)
    ratings_content = reader.read(ratings_path)
    movie_ids, titles = _parse_items(items_content, items_path)
    rows = _parse_ratings(ratings_content, ratings_path)
    return _build_ratings(
        rows, movie_ids, titles, ratings_path, items_path, source,
        _fingerprint(ratings_content, items_content), grouplens_root,
    )


def load_ratings_files(data_root: str, ratings_path: str, items_path: str) -> Ratings:
    """Load GroupLens ``u.data``/``u.item`` format files given relative to ``data_root``."""
    reader = _FolderReader(data_root)
    return _load_from_reader(
        reader, ratings_path, items_path, source=f"{ratings_path} + {items_path} under {reader.description}"
    )


def dataset_files_size(data_root: str, *relative_paths: str) -> int:
    """Total bytes of files under ``data_root``, checking each path is confined to it.

    Lets the trainer decide, before reading anything, whether a dataset is
    small enough to validate inside the Train call.
    """
    reader = _FolderReader(data_root)
    return sum(reader.resolve(path).stat().st_size for path in relative_paths)


# --------------------------------------------------------------------------- MovieLens 100K


def _grouplens_reader(path: str):
    candidate = Path(path).expanduser()
    if candidate.is_file() and zipfile.is_zipfile(candidate):
        reader = _ZipReader(candidate)
    elif candidate.is_dir():
        reader = _FolderReader(candidate)
    else:
        raise MovieLensNotFound(_not_found_message(f"{path!r} is neither a folder nor a zip file"))
    for required in ("u.data", "u.item"):
        if not reader.exists(required):
            raise MovieLensNotFound(_not_found_message(f"{path!r} has no {required}"))
    return reader


def _tfds_movielens() -> tuple[Ratings, str]:
    """Fall back to the TFDS copy; only if it is cached or the download host answers quickly."""
    from movierec_common.tfenv import tensorflow  # noqa: PLC0415 - TF only when needed

    tensorflow()
    import tensorflow_datasets as tfds  # noqa: PLC0415

    builder = tfds.builder("movielens/100k-ratings")
    if not builder.is_prepared():
        try:
            socket.create_connection(("files.grouplens.org", 443), timeout=_TFDS_PROBE_SECONDS).close()
        except OSError as error:
            raise MovieLensNotFound(
                _not_found_message(f"no local copy given and files.grouplens.org is unreachable ({error})")
            ) from None
        try:
            builder.download_and_prepare()
        except Exception as error:  # noqa: BLE001 - any download failure means "not found"
            raise MovieLensNotFound(_not_found_message(f"TFDS download failed ({error})")) from None
    examples = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
    movie_raw = examples["movie_id"].astype(np.int64)
    titles_raw = [t.decode("utf-8", "replace") for t in examples["movie_title"]]
    title_of = dict(zip(movie_raw.tolist(), titles_raw))
    movie_ids = np.asarray(sorted(title_of), dtype=np.int64)
    titles = np.asarray([title_of[m] for m in movie_ids.tolist()], dtype=str)
    rows = [
        (u.decode(), int(m), float(r), int(t), i + 1)
        for i, (u, m, r, t) in enumerate(
            zip(examples["user_id"], movie_raw, examples["user_rating"], examples["timestamp"])
        )
    ]
    digest = hashlib.sha256(movie_raw.tobytes() + examples["user_rating"].tobytes() + examples["timestamp"].tobytes())
    data = _build_ratings(rows, movie_ids, titles, "tfds:ratings", "tfds:movies",
                          f"MovieLens 100K (TFDS {builder.data_dir})", digest.hexdigest())
    return data, str(builder.data_dir)


def load_movielens_100k(movielens_dir: str | None = None) -> tuple[Ratings, str]:
    """Load MovieLens 100K from an explicit folder/zip, ``MOVIELENS_DIR``, or the TFDS cache."""
    path = movielens_dir or os.environ.get("MOVIELENS_DIR")
    if path:
        reader = _grouplens_reader(path)
        data = _load_from_reader(
            reader, "u.data", "u.item", source=f"MovieLens 100K ({reader.description})",
            grouplens_root=reader.description,
        )
        return data, reader.description
    return _tfds_movielens()


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
        # Ties in time are broken by position so the split is deterministic.
        key = timestamps.astype(np.float64) + np.arange(len(users)) / (len(users) + 1.0)
    else:
        raise DatasetError(f"unknown holdout {holdout!r}; expected one of {', '.join(HOLDOUTS)}")
    return _per_user_holdout(users, key, size)


def _predefined_split(data: Ratings, name: str, movielens_dir: str | None) -> Split:
    root = movielens_dir or data.grouplens_root
    if root is None:
        raise DatasetError(
            f"holdout {name!r} is a GroupLens predefined split; it needs MovieLens 100K loaded from a "
            f"GroupLens folder or ml-100k.zip, but the data came from {data.source}"
        )
    reader = _grouplens_reader(root)
    key_of = {}
    movie_to_item = {int(m): i for i, m in enumerate(data.movie_ids)}
    user_to_index = {u: i for i, u in enumerate(data.user_ids.tolist())}
    pair_keys = data.users.astype(np.int64) * data.n_items + data.items
    position_of = dict(zip(pair_keys.tolist(), range(len(pair_keys))))
    parts = {}
    for suffix in ("base", "test"):
        file_name = f"{name}.{suffix}"
        if not reader.exists(file_name):
            raise DatasetError(f"predefined split {name!r}: {file_name} is missing from {reader.description}")
        positions = []
        for user, movie, _rating, _timestamp, number in _parse_ratings(reader.read(file_name), file_name):
            if user not in user_to_index or movie not in movie_to_item:
                raise DatasetError(f"{file_name}:{number}: user {user} / movie {movie} is not in the loaded ratings")
            key = user_to_index[user] * data.n_items + movie_to_item[movie]
            if key not in position_of:
                raise DatasetError(f"{file_name}:{number}: user {user} never rated movie {movie} in the loaded ratings")
            if key in key_of:
                raise DatasetError(f"{file_name}:{number}: rating also listed in {key_of[key]}")
            key_of[key] = f"{file_name}:{number}"
            positions.append(position_of[key])
        parts[suffix] = np.sort(np.asarray(positions, dtype=np.int64))
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


def carve_validation(split: Split, size: int, seed: int) -> Split:
    """A split of ``split``'s training ratings only, for early stopping and model selection.

    The held-out test set is never looked at, so choices made on this split do
    not leak into the reported metrics.
    """
    train = split.train
    mask = holdout_mask(split.data.users[train], split.data.timestamps[train], "random", size, seed)
    return Split(
        data=split.data, train=train[~mask], test=train[mask],
        name=f"validation: random {size} per user of {split.name} train (seed {seed})",
    )
