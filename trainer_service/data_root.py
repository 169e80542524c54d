"""The security boundary around dataset files: paths confined to a root, sizes capped, nothing read unasked.

A ``TrainRequest`` may name its own ratings and items files. Those paths come
from a remote caller, so they are only ever resolved here, relative to the
trainer's ``--data-root``: an absolute path, a ``..``, a NUL byte or a symlink
that resolves outside the root is refused before anything is opened, and a
file over ``--max-dataset-bytes`` is refused before it is read (and again if
it grows while being read). The Train call runs :func:`check_dataset_files`
on its own thread (a few ``stat`` calls); the job reads through the same
:class:`FolderReader`, so both apply one rule.

An operator's GroupLens folder (``--movielens-dir``) is read through the same
reader: its size cap is as useful there, and one implementation of
confinement is easier to trust than two.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Protocol

from trainer_service.errors import DatasetError, DatasetPathError

# Large enough for ML-25M's ratings.csv (about 680 MB); the trainer's
# --max-dataset-bytes lowers or raises it.
MAX_FILE_BYTES = 2 * 1024 ** 3


class Reader(Protocol):
    """Files of one dataset location (a folder or a zip), read whole and capped in size."""

    @property
    def description(self) -> str:
        """Where the files are, for messages and a dataset's source."""

    @property
    def names(self) -> tuple[str, ...]:
        """The location's own names, which hint at the release it holds."""

    def exists(self, relative: str) -> bool: ...

    def read(self, relative: str) -> bytes: ...


class FolderReader:
    """Reads files under a root, refusing anything that resolves outside it."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES):
        root_path = Path(root)
        if not root_path.is_dir():
            raise DatasetPathError(f"data root {str(root)!r} is not an existing folder")
        self.root = root_path.resolve()
        self.description = str(self.root)
        self.names = (self.root.name,)  # hints at which release this is
        self.max_bytes = max_bytes

    def resolve(self, relative: str) -> Path:
        """The file ``relative`` names under the root; ``DatasetPathError`` for anything else."""
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


def check_dataset_files(data_root: str, *relative_paths: str, max_bytes: int = MAX_FILE_BYTES) -> None:
    """Refuses paths that leave ``data_root`` or name no file, and files over ``max_bytes``, reading none.

    What the Train call may check on its request thread: a few ``stat``
    calls. The content is parsed by the job (see ``data.load_ratings_files``),
    whose failure names the file and line.
    """
    reader = FolderReader(data_root, max_bytes)
    for relative in relative_paths:
        size = reader.resolve(relative).stat().st_size
        if size > max_bytes:
            raise DatasetError(f"{relative}: file is {size} bytes, over the {max_bytes}-byte limit")
