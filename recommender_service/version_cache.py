"""Local copies of versions from an object-store model root (:class:`VersionCache`)."""

from __future__ import annotations

import os
import shutil
import tempfile

from movierec_common.artifact import METADATA_FILE, ArtifactError, check_file_name
from movierec_common.model_root import RootUnreachable, download, exists, files_under, join


class VersionCache:
    """Local copies of versions from an object-store root.

    TensorFlow and faiss read local files, and a version must be verified as
    the bytes that will be loaded, so a remote version is copied here first
    and validated from the copy. Nothing is downloaded before ``metadata.json``
    exists (it is written last), so a version still being uploaded costs a
    listing, not a download. Only the served version's copy is kept.

    Only the files listed are copied, and only when every name is a plain
    relative path: an object key holding ``..`` or an absolute part refuses
    the version before a byte is downloaded.
    """

    def __init__(self, folder: str | None):
        # A folder of this process's own inside the given one: replicas on one
        # host may share --cache-dir, and must not delete each other's copies.
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
        self.folder = os.path.abspath(tempfile.mkdtemp(prefix=f"movierec-cache-{os.getpid()}-", dir=folder))

    def copy(self, version: int, remote: str, fingerprint: str) -> str:
        """The local copy of a complete remote version.

        Raises ArtifactError when the version is not completely published yet
        or names a file outside its folder, RootUnreachable when the root
        cannot be read (nothing is then concluded about the version).
        """
        if not exists(join(remote, METADATA_FILE)):
            raise ArtifactError(f"{METADATA_FILE} is missing (the version is not completely published yet)")
        names = sorted(files_under(remote))
        for name in names:
            check_file_name(name)
        local = os.path.join(self.folder, f"{version}-{fingerprint[:12]}")
        shutil.rmtree(local, ignore_errors=True)
        try:
            download(remote, local, names)
        except RootUnreachable:
            self.discard(local)
            raise
        except FileNotFoundError as exc:
            # Listed, then gone before it was copied: the folder changed under the copy (retention, a
            # re-upload). That says nothing about the version; the next poll looks at it again.
            self.discard(local)
            raise RootUnreachable(f"copying {remote} failed: a file went away during the copy ({exc})",
                                  remote) from exc
        return local

    def discard(self, local: str) -> None:
        if os.path.dirname(local) == self.folder:
            shutil.rmtree(local, ignore_errors=True)

    def keep_only(self, local: str) -> None:
        for name in os.listdir(self.folder):
            if os.path.join(self.folder, name) != local:
                shutil.rmtree(os.path.join(self.folder, name), ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
