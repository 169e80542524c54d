"""GroupLens copies of MovieLens: a folder or a zip as distributed, and which release it holds.

An operator points the trainer at a copy (``--movielens-dir`` or
``MOVIELENS_DIR``); it may be an unpacked folder or the zip itself, its
members under one top folder of any name or at the top. The release is
recognised from the copy's content, not its name: the file layout first,
then the folder or zip names, then its README, then a file only that release
ships. Reading the files is ``data``'s job; this module finds them.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from trainer_service.data_root import MAX_FILE_BYTES, FolderReader, Reader
from trainer_service.errors import DatasetError, DatasetPathError, MovieLensNotFound
from trainer_service.releases import FILES_100K, FILES_CSV, FILES_DAT, ML_100K, RELEASES, Release

_RELEASE_IN_TEXT = re.compile(r"ml-(100k|10m|1m|20m|25m|latest-small|latest)", re.IGNORECASE)


class ZipReader:
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


@dataclass(frozen=True)
class GroupLensCopy:
    """A GroupLens folder or zip: where its files are, and which release it holds (None: unknown)."""

    reader: FolderReader | ZipReader
    files: tuple[str, str]
    release: Release | None

    def describe(self) -> str:
        return self.release.title if self.release else f"{' + '.join(self.files)} of an unrecognised release"


def _readme_text(reader: Reader) -> str:
    for name in ("README.txt", "README", "README.html"):
        if reader.exists(name):
            try:
                return reader.read(name)[:1 << 16].decode("latin-1")
            except DatasetError:
                return ""
    return ""


def _identify(reader: Reader, files: tuple[str, str]) -> Release | None:
    """Which release a copy holds: by its file layout, folder or zip names, then README."""
    if files == FILES_100K:
        return ML_100K
    candidates = {release.key: release for release in RELEASES if release.files == files}
    for text in (*reader.names, _readme_text(reader)):
        for match in _RELEASE_IN_TEXT.finditer(text):
            key = f"ml-{match.group(1).lower()}"
            if key in candidates:
                return candidates[key]
    if files == FILES_DAT:  # ML-1M ships users.dat, ML-10M tags.dat
        return candidates["ml-1m"] if reader.exists("users.dat") else (
            candidates["ml-10m"] if reader.exists("tags.dat") else None)
    return None


def open_copy(path: str, wanted: Release, max_bytes: int) -> GroupLensCopy:
    """The copy at ``path``; ``MovieLensNotFound`` (worded for ``wanted``) when it holds no MovieLens files."""
    candidate = Path(path).expanduser()
    reader: FolderReader | ZipReader
    if candidate.is_file() and zipfile.is_zipfile(candidate):
        reader = ZipReader(candidate, max_bytes)
    elif candidate.is_dir():
        reader = FolderReader(candidate, max_bytes)
    else:
        raise MovieLensNotFound(wanted.not_found(f"{path!r} is neither a folder nor a zip file"))
    for files in (FILES_100K, FILES_DAT, FILES_CSV):
        if all(reader.exists(name) for name in files):
            return GroupLensCopy(reader, files, _identify(reader, files))
    raise MovieLensNotFound(wanted.not_found(
        f"{path!r} has no u.data and u.item, ratings.dat and movies.dat, or ratings.csv and movies.csv"))
