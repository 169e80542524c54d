"""The model artifact: the one format both services agree on.

A published version is a SavedModel that carries *everything* serving needs,
so the recommender never has to know which model kind produced it:

* ``user_ids`` / ``user_vectors``: one vector per known user;
* ``movie_ids`` / ``titles`` / ``item_vectors``: the retrieval index;
  ``score(user, movie) = user_vector . item_vector`` for every model kind
  (two-tower towers, BPR factors, EASE's history rows against its item
  weights all reduce to this);
* ``seen_indptr`` / ``seen_indices``: each user's rated movies (CSR), so
  serving can exclude what the user already rated; each row is in time
  order, oldest first, with ``seen_timestamps`` (Unix seconds, 0 where the
  data has none) beside it, so serving can weigh recency (see
  ``session_query``); versions written before time order was kept have no
  timestamps and rows in movie order;
* ``popularity``: training interaction counts, the cold-start list.

A ``serving_default`` signature computes the same top-k inside TensorFlow, so
TF Serving could load the very same folder; the recommender uses it as a smoke
test and serves from the exported arrays with numpy, which is an order of
magnitude faster per call than entering the TF runtime.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from movierec_common import model_root
from movierec_common.tfenv import tensorflow

METADATA_FILE = "metadata.json"
LOSS_PLOT_FILE = "loss.png"
SERVING_SIGNATURE = "serving_default"
FORMAT_VERSION = 1

# Shapes the whole system refuses beyond, so that a corrupt or hostile
# artifact cannot make the recommender allocate without bound.
MAX_USERS = 10_000_000
MAX_ITEMS = 10_000_000
# Closed-form kinds' vectors are as wide as the catalogue (the sequential kind
# twice as wide), and the trainer allows them up to 20,000 movies.
MAX_DIM = 40_000


class ArtifactError(ValueError):
    """A version folder that cannot be served; the message says why."""


class UserMovieIndex:
    """Sizes and per-user seen lists of anything holding ``user_ids``, ``movie_ids``
    and a CSR of seen movies (``seen_indptr``, ``seen_indices``): the artifact,
    and the serving side's derived catalogue."""

    user_ids: np.ndarray
    movie_ids: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.movie_ids.shape[0])

    def seen_items(self, user_index: int) -> np.ndarray:
        return self.seen_indices[self.seen_indptr[user_index] : self.seen_indptr[user_index + 1]]


@dataclass(frozen=True)
class ModelArtifact(UserMovieIndex):
    user_ids: np.ndarray        # [U] str
    user_vectors: np.ndarray    # [U, d] float32
    movie_ids: np.ndarray       # [I] int64
    titles: np.ndarray          # [I] str
    item_vectors: np.ndarray    # [I, d] float32
    seen_indptr: np.ndarray     # [U + 1] int64
    seen_indices: np.ndarray    # [nnz] int32, item indices
    popularity: np.ndarray      # [I] float32, training interaction counts
    # [nnz] int64, aligned with seen_indices; None (or empty with nnz > 0) = order unknown
    seen_timestamps: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def time_ordered(self) -> bool:
        return self.seen_timestamps is not None and self.seen_timestamps.shape == self.seen_indices.shape

    def validate(self) -> None:
        """Raises ArtifactError unless every array is consistent with the others."""
        u, i = self.user_ids.shape[0], self.movie_ids.shape[0]
        checks = [
            (self.user_ids.ndim == 1 and 0 < u <= MAX_USERS, f"user_ids must be 1-D with 1..{MAX_USERS} entries"),
            (self.movie_ids.ndim == 1 and 0 < i <= MAX_ITEMS, f"movie_ids must be 1-D with 1..{MAX_ITEMS} entries"),
            (self.user_vectors.ndim == 2 and self.user_vectors.shape[0] == u,
             f"user_vectors shape {self.user_vectors.shape} does not match {u} users"),
            (self.item_vectors.ndim == 2 and self.item_vectors.shape[0] == i,
             f"item_vectors shape {self.item_vectors.shape} does not match {i} movies"),
            (self.user_vectors.ndim == 2 and self.item_vectors.ndim == 2
             and self.user_vectors.shape[1] == self.item_vectors.shape[1]
             and 0 < self.user_vectors.shape[1] <= MAX_DIM,
             f"user and item vector widths differ or exceed {MAX_DIM}: "
             f"{self.user_vectors.shape} vs {self.item_vectors.shape}"),
            (self.titles.shape == (i,), f"titles shape {self.titles.shape} does not match {i} movies"),
            (self.popularity.shape == (i,), f"popularity shape {self.popularity.shape} does not match {i} movies"),
            (self.seen_indptr.shape == (u + 1,),
             f"seen_indptr shape {self.seen_indptr.shape} does not match {u} users"),
        ]
        for ok, message in checks:
            if not ok:
                raise ArtifactError(message)
        indptr = self.seen_indptr
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != self.seen_indices.shape[0]:
            raise ArtifactError("seen_indptr is not a valid row index for seen_indices")
        if self.seen_timestamps is not None and self.seen_timestamps.shape not in ((0,), self.seen_indices.shape):
            raise ArtifactError(f"seen_timestamps shape {self.seen_timestamps.shape} does not match "
                                f"{self.seen_indices.shape[0]} seen entries")
        if self.seen_indices.size and (self.seen_indices.min() < 0 or self.seen_indices.max() >= i):
            raise ArtifactError("seen_indices refer to movies outside the index")
        if len(set(self.user_ids.tolist())) != u:
            raise ArtifactError("user_ids are not unique")
        if len(np.unique(self.movie_ids)) != i:
            raise ArtifactError("movie_ids are not unique")
        for name in ("user_vectors", "item_vectors", "popularity"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ArtifactError(f"{name} contains NaN or infinite values")


def _decode(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def build_module(artifact: ModelArtifact):
    """A tf.Module whose variables hold the artifact and whose function ranks movies.

    The ranking mirrors the recommender's numpy path exactly: seen movies are
    pushed to -inf, unknown users get the popularity order, ties break by
    index (top_k is stable), so the smoke test can compare the two.

    :func:`save` is the way to write a version; this is public for the tests
    that must write SavedModels validation has to refuse (an artifact that
    :meth:`ModelArtifact.validate` would stop, a signature that lies).
    """
    tf = tensorflow()

    class RecommenderModule(tf.Module):
        def __init__(self):
            super().__init__(name="movierec")
            self.user_ids = tf.Variable(artifact.user_ids.astype(str).astype(bytes), trainable=False, name="user_ids")
            self.user_vectors = tf.Variable(artifact.user_vectors.astype(np.float32), trainable=False,
                                            name="user_vectors")
            self.movie_ids = tf.Variable(artifact.movie_ids.astype(np.int64), trainable=False, name="movie_ids")
            self.titles = tf.Variable(np.array([t.encode("utf-8") for t in artifact.titles]), trainable=False,
                                      name="titles")
            self.item_vectors = tf.Variable(artifact.item_vectors.astype(np.float32), trainable=False,
                                            name="item_vectors")
            self.seen_indptr = tf.Variable(artifact.seen_indptr.astype(np.int64), trainable=False, name="seen_indptr")
            self.seen_indices = tf.Variable(artifact.seen_indices.astype(np.int64), trainable=False,
                                            name="seen_indices")
            self.popularity = tf.Variable(artifact.popularity.astype(np.float32), trainable=False, name="popularity")
            timestamps = artifact.seen_timestamps if artifact.time_ordered else np.zeros(0, dtype=np.int64)
            self.seen_timestamps = tf.Variable(timestamps.astype(np.int64), trainable=False, name="seen_timestamps")
            self.user_table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(artifact.user_ids.astype(str).astype(bytes)),
                    tf.range(artifact.num_users, dtype=tf.int64),
                ),
                default_value=-1,
            )

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.string, name="user_id"),
            tf.TensorSpec([], tf.int32, name="k"),
        ])
        def recommend(self, user_id, k):
            index = self.user_table.lookup(user_id)
            known = index >= 0
            safe = tf.maximum(index, 0)
            scores = tf.matmul(tf.gather(self.user_vectors, safe), self.item_vectors, transpose_b=True)
            seen = tf.RaggedTensor.from_row_splits(self.seen_indices, self.seen_indptr)
            rows = tf.gather(seen, safe)
            coords = tf.stack([tf.cast(rows.value_rowids(), tf.int64), rows.flat_values], axis=1)
            mask = tf.scatter_nd(coords, tf.ones_like(rows.flat_values, tf.bool), tf.shape(scores, out_type=tf.int64))
            scores = tf.where(mask, tf.constant(-np.inf, tf.float32), scores)
            popular = tf.broadcast_to(self.popularity, tf.shape(scores))
            scores = tf.where(known[:, None], scores, popular)
            k = tf.minimum(k, tf.shape(scores)[1])
            top = tf.math.top_k(scores, k=k, sorted=True)
            return {
                "movie_ids": tf.gather(self.movie_ids, top.indices),
                "titles": tf.gather(self.titles, top.indices),
                "scores": top.values,
                "cold_start": tf.logical_not(known),
            }

    return RecommenderModule()


def save(artifact: ModelArtifact, path: str) -> None:
    """Writes the artifact as a SavedModel at path (which must not exist yet)."""
    artifact.validate()
    tf = tensorflow()
    module = build_module(artifact)
    tf.saved_model.save(module, path, signatures={SERVING_SIGNATURE: module.recommend})


def write_version(folder: str, artifact: ModelArtifact, metadata: dict[str, Any],
                  files: dict[str, bytes] | None = None) -> None:
    """Writes a complete version into a new local folder: the SavedModel, the
    side files, then ``metadata.json`` (with the manifest of all the others)
    last, so that its presence means the rest is there."""
    save(artifact, folder)
    for name, data in (files or {}).items():
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(data)
    record = {**metadata, "format_version": FORMAT_VERSION, "files": file_manifest(folder)}
    with open(os.path.join(folder, METADATA_FILE), "w") as handle:
        handle.write(json.dumps(record, indent=2, sort_keys=True, default=str))


def load(path: str) -> tuple[ModelArtifact, Any]:
    """Loads a SavedModel written by :func:`save`; returns the arrays and the loaded module.

    Raises ArtifactError for anything that is not a complete, consistent artifact.
    """
    tf = tensorflow()
    try:
        loaded = tf.saved_model.load(path)
    except Exception as exc:  # TF raises many types for corrupt files
        raise ArtifactError(f"SavedModel does not load: {type(exc).__name__}: {_first_line(exc)}") from exc
    try:
        artifact = ModelArtifact(
            user_ids=_decode(loaded.user_ids.numpy()),
            user_vectors=np.asarray(loaded.user_vectors.numpy(), dtype=np.float32),
            movie_ids=np.asarray(loaded.movie_ids.numpy(), dtype=np.int64),
            titles=_decode(loaded.titles.numpy()),
            item_vectors=np.asarray(loaded.item_vectors.numpy(), dtype=np.float32),
            seen_indptr=np.asarray(loaded.seen_indptr.numpy(), dtype=np.int64),
            seen_indices=np.asarray(loaded.seen_indices.numpy(), dtype=np.int32),
            popularity=np.asarray(loaded.popularity.numpy(), dtype=np.float32),
            # absent from versions written before time order was kept
            seen_timestamps=(np.asarray(loaded.seen_timestamps.numpy(), dtype=np.int64)
                             if hasattr(loaded, "seen_timestamps") else None),
        )
    except AttributeError as exc:
        raise ArtifactError(f"SavedModel is not a movierec artifact: missing {exc}") from exc
    if SERVING_SIGNATURE not in loaded.signatures:
        raise ArtifactError(f"SavedModel has no '{SERVING_SIGNATURE}' signature")
    artifact.validate()
    return artifact, loaded


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def read_metadata(version_dir: str) -> dict[str, Any]:
    """Reads metadata.json, the completeness marker of a version folder (local or remote)."""
    path = model_root.join(version_dir, METADATA_FILE)
    try:
        raw = model_root.read_bytes(path)
    except FileNotFoundError:
        raise ArtifactError(f"{METADATA_FILE} is missing (the version was not completely published)") from None
    try:
        metadata = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{METADATA_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{METADATA_FILE} is not a movierec format_version {FORMAT_VERSION} record")
    return metadata


def file_manifest(version_dir: str) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under version_dir (metadata.json aside).

    Stored in metadata.json, it lets the recommender prove that a folder is
    complete and intact, whatever order a copy tool wrote its files in.
    """
    import hashlib

    fs, root = model_root.filesystem(version_dir)
    manifest: dict[str, dict[str, Any]] = {}
    for relative in sorted(model_root.files_under(version_dir)):
        if relative == METADATA_FILE:
            continue
        digest = hashlib.sha256()
        size = 0
        with fs.open(f"{root.rstrip('/')}/{relative}", "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        manifest[relative] = {"size": size, "sha256": digest.hexdigest()}
    return manifest


def verify_manifest(version_dir: str, manifest: Any) -> None:
    """Raises ArtifactError naming the first missing, truncated or altered file."""
    if not isinstance(manifest, dict) or not manifest:
        raise ArtifactError(f"{METADATA_FILE} has no file manifest")
    actual = file_manifest(version_dir)
    for relative, expected in sorted(manifest.items()):
        found = actual.get(relative)
        if found is None:
            raise ArtifactError(f"{relative} is missing")
        if found["size"] != expected.get("size"):
            raise ArtifactError(f"{relative} is {found['size']} bytes, expected {expected.get('size')} "
                                "(truncated or altered)")
        if found["sha256"] != expected.get("sha256"):
            raise ArtifactError(f"{relative} does not match its checksum (corrupt or altered)")
