"""What a served version knows besides its item vectors: users, movies, titles,
genres and years, seen lists and popularity (:class:`ServingCatalogue`).

Derived once per version in the loader process from the SavedModel's arrays
(``movierec_common.artifact.ModelArtifact``), so the serving process receives
flat arrays, handed over as mapped files, and builds no per-movie Python
objects. Not to be confused with the trainer's catalogue of a dataset's movies
(``trainer_service.formats``): this one is the serving side's view of one
published version.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from movierec_common.artifact import ModelArtifact, UserMovieIndex
from movierec_common.movie_metadata import MovieMetadata
from recommender_service.top_k import top_k_indices


class Titles:
    """Movie titles as one UTF-8 blob plus offsets, decoded only for the movies answered.

    A million titles as Python strings cost ~90 MB, a million objects to
    build, and, pickled between processes, a long GIL hold to rebuild; this
    costs their bytes and two numpy arrays.
    """

    __slots__ = ("blob", "offsets", "_bytes")

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self.blob = blob          # uint8 [total bytes]
        self.offsets = offsets    # int64 [I + 1]
        self._bytes = blob.data

    @classmethod
    def from_strings(cls, titles: Iterable[object]) -> Titles:
        encoded = [str(t).encode("utf-8") for t in titles]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    def __getitem__(self, i: int) -> str:
        return str(self._bytes[self.offsets[i]:self.offsets[i + 1]], "utf-8")

    def take(self, indices: np.ndarray) -> list[str]:
        starts = self.offsets[indices].tolist()
        ends = self.offsets[np.asarray(indices) + 1].tolist()
        view = self._bytes
        return [str(view[s:e], "utf-8") for s, e in zip(starts, ends, strict=True)]

    def tolist(self) -> list[str]:
        return self.take(np.arange(len(self)))

    def __getstate__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.blob, self.offsets

    def __setstate__(self, state: tuple[np.ndarray, np.ndarray]) -> None:
        self.blob, self.offsets = state
        self._bytes = self.blob.data


@dataclass(frozen=True)
class ServingCatalogue(UserMovieIndex):
    """Everything a Retriever needs besides the item vectors (its TopK holds those).

    Derived once per version in the loader process, so the serving process
    receives flat arrays and builds no per-movie Python objects.
    """

    user_ids: np.ndarray        # [U] str
    user_vectors: np.ndarray    # [U, d] float32
    movie_ids: np.ndarray       # [I] int64
    titles: Titles
    seen_indptr: np.ndarray     # [U + 1] int64
    seen_indices: np.ndarray    # [nnz] int32, distinct and ascending per user: what exclusion needs
    popular: np.ndarray         # [I] int32, most popular first (ties: lower index)
    popular_share: np.ndarray   # [I] float32, share of all interactions, aligned with popular
    movie_order: np.ndarray     # [I] int32, argsort(movie_ids): id -> index by binary search
    # Each user's history as the artifact keeps it, oldest first: what a session query needs.
    history_indptr: np.ndarray  # [U + 1] int64, the artifact's seen_indptr
    history_indices: np.ndarray  # [nnz'] int32
    # Genres (uint64 masks) and years (int16) aligned with movie_ids; MovieMetadata.none for a
    # version published before metadata existed.
    movies: MovieMetadata

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact, movies: MovieMetadata | None = None) -> ServingCatalogue:
        """``movies``: the version's metadata (movie_metadata.read); None: it has none."""
        users, items = artifact.num_users, artifact.num_items
        rows = np.repeat(np.arange(users, dtype=np.int64), np.diff(artifact.seen_indptr))
        keys = np.unique(rows * items + artifact.seen_indices.astype(np.int64))
        indptr = np.zeros(users + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys // items, minlength=users), out=indptr[1:])
        seen = (keys % items).astype(np.int32)
        history_indptr = np.ascontiguousarray(artifact.seen_indptr, dtype=np.int64)
        history = np.ascontiguousarray(artifact.seen_indices, dtype=np.int32)
        if np.array_equal(history_indptr, indptr) and np.array_equal(history, seen):
            history_indptr, history = indptr, seen  # rows already distinct and in movie order: one copy
        popularity = artifact.popularity.astype(np.float64)
        popular = top_k_indices(popularity, items).astype(np.int32)
        share = (popularity[popular] / (popularity.sum() or 1.0)).astype(np.float32)
        return cls(
            user_ids=np.asarray(artifact.user_ids, dtype=object),
            user_vectors=np.ascontiguousarray(artifact.user_vectors, dtype=np.float32),
            movie_ids=np.ascontiguousarray(artifact.movie_ids, dtype=np.int64),
            titles=Titles.from_strings(artifact.titles),
            seen_indptr=indptr,
            seen_indices=seen,
            popular=popular,
            popular_share=share,
            movie_order=np.argsort(artifact.movie_ids, kind="stable").astype(np.int32),
            history_indptr=history_indptr,
            history_indices=history,
            movies=movies if movies is not None else MovieMetadata.none(items),
        )


def item_norms(item_vectors: np.ndarray) -> np.ndarray:
    """Each movie's vector norm (floored away from zero), for cosine similarity on an index backend."""
    return np.maximum(np.linalg.norm(item_vectors, axis=1), 1e-12).astype(np.float32)
