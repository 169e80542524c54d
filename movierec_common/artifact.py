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

Movie metadata (genres, release years) is not in the SavedModel but beside
it: two side arrays listed in the manifest and named by metadata.json's
``movies`` record (see ``movie_metadata``). A version published before
metadata existed has neither; it loads and serves exactly as before, every
movie without genres and of unknown year (0), and without genre counts.

A ``serving_default`` signature computes the same top-k inside TensorFlow, so
TF Serving could load the very same folder; the recommender uses it as a smoke
test and serves from the exported arrays with numpy, which is an order of
magnitude faster per call than entering the TF runtime.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from movierec_common import model_root
from movierec_common.json_records import Figures, JsonRecord, RecordError
from movierec_common.tfenv import tensorflow

METADATA_FILE = "metadata.json"
# A publishing key's signature of metadata.json and the version's number
# (movierec_common.signing); beside metadata.json, not in its manifest.
SIGNATURE_FILE = "signature.json"
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

    def seen_count(self, user_index: int) -> int:
        return int(self.seen_indptr[user_index + 1] - self.seen_indptr[user_index])


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


def build_module(artifact: ModelArtifact) -> Any:
    """A tf.Module whose variables hold the artifact and whose function ranks movies.

    The ranking mirrors the recommender's numpy path exactly: seen movies are
    pushed to -inf, unknown users get the popularity order, ties break by
    index (top_k is stable), so the smoke test can compare the two.

    :func:`save` is the way to write a version; this is public for the tests
    that must write SavedModels validation has to refuse (an artifact that
    :meth:`ModelArtifact.validate` would stop, a signature that lies).
    """
    tf = tensorflow()

    class RecommenderModule(tf.Module):  # type: ignore[misc, name-defined] # TensorFlow ships no types
        def __init__(self) -> None:
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
            timestamps = artifact.seen_timestamps
            if timestamps is None or not artifact.time_ordered:
                timestamps = np.zeros(0, dtype=np.int64)
            self.seen_timestamps = tf.Variable(timestamps.astype(np.int64), trainable=False, name="seen_timestamps")
            self.user_table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(artifact.user_ids.astype(str).astype(bytes)),
                    tf.range(artifact.num_users, dtype=tf.int64),
                ),
                default_value=-1,
            )

        @tf.function(input_signature=[  # type: ignore[untyped-decorator] # TensorFlow ships no types
            tf.TensorSpec([None], tf.string, name="user_id"),
            tf.TensorSpec([], tf.int32, name="k"),
        ])
        def recommend(self, user_id: Any, k: Any) -> dict[str, Any]:
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


def write_version(folder: str, artifact: ModelArtifact, metadata: VersionMetadata,
                  files: dict[str, bytes] | None = None, *, sign: Callable[[bytes], bytes] | None = None) -> None:
    """Writes a complete version into a new local folder: the SavedModel, the
    side files, then ``metadata.json`` (with the manifest of all the others)
    last, so that its presence means the rest is there.

    ``sign`` turns metadata.json's bytes into ``signature.json``'s (see
    signing.version_signature); it is written before metadata.json, so a
    version that looks complete is never missing its signature.
    """
    save(artifact, folder)
    for name, data in (files or {}).items():
        check_file_name(name)
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(data)
    record = dataclasses.replace(metadata, format_version=FORMAT_VERSION, files=file_manifest(folder))
    text = record.to_text().encode("utf-8")
    if sign is not None:
        with open(os.path.join(folder, SIGNATURE_FILE), "wb") as handle:
            handle.write(sign(text))
    with open(os.path.join(folder, METADATA_FILE), "wb") as handle:
        handle.write(text)


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


def read_metadata(version_dir: str) -> VersionMetadata:
    """Reads metadata.json, the completeness marker of a version folder (local or remote).

    Raises ArtifactError for a missing or unusable record, RootUnreachable
    when the store cannot be read.
    """
    path = model_root.join(version_dir, METADATA_FILE)
    try:
        raw = model_root.read_bytes(path)
    except FileNotFoundError:
        raise ArtifactError(f"{METADATA_FILE} is missing (the version was not completely published)") from None
    return VersionMetadata.from_text(raw)


def check_file_name(name: str) -> None:
    """Raises ArtifactError unless ``name`` is a plain relative path inside a version folder.

    Object keys are free text: ``1/../../x`` or ``1//etc/x`` would name a
    file outside the folder a version is copied to or read from.
    """
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in parts):
        raise ArtifactError(f"object key {name[:200]!r} holds '..', '.', an empty or an absolute part "
                            "(it could name a file outside the version's folder); the version is refused")


def file_manifest(version_dir: str) -> dict[str, FileEntry]:
    """Size and sha256 of every file under version_dir (metadata.json and signature.json aside).

    Stored in metadata.json, it lets the recommender prove that a folder is
    complete and intact, whatever order a copy tool wrote its files in.
    """
    manifest: dict[str, FileEntry] = {}
    for relative in sorted(model_root.files_under(version_dir)):
        if relative in (METADATA_FILE, SIGNATURE_FILE):
            continue
        check_file_name(relative)
        digest = hashlib.sha256()
        size = 0
        with model_root.open_for_reading(model_root.join(version_dir, relative)) as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        manifest[relative] = FileEntry(size=size, sha256=digest.hexdigest())
    return manifest


def verify_manifest(version_dir: str, manifest: dict[str, FileEntry]) -> None:
    """Raises ArtifactError naming the first missing, truncated or altered file."""
    if not manifest:
        raise ArtifactError(f"{METADATA_FILE} has no file manifest")
    for relative in manifest:
        check_file_name(relative)
    actual = file_manifest(version_dir)
    for relative, expected in sorted(manifest.items()):
        found = actual.get(relative)
        if found is None:
            raise ArtifactError(f"{relative} is missing")
        if found.size != expected.size:
            raise ArtifactError(f"{relative} is {found.size} bytes, expected {expected.size} "
                                "(truncated or altered)")
        if found.sha256 != expected.sha256:
            raise ArtifactError(f"{relative} does not match its checksum (corrupt or altered)")


# --------------------------------------------------------------------------- metadata.json, typed
#
# One record the trainer writes and every reader reads; nothing else reads
# metadata.json by string keys. The rule for versions written by another
# release, in both directions:
#
# * a field this reader knows but the file lacks takes the default declared
#   below (the version was written before the field existed);
# * a field the file has but this reader does not know is kept in ``extra``,
#   written back unchanged by ``to_json``, and otherwise ignored (a newer
#   trainer wrote it);
# * a known field holding the wrong type (a string for a number, a list for
#   an object) is an ArtifactError, and the version is not served: a record
#   that lies about its shape cannot be trusted on the rest. One exception:
#   in the maps of named figures (``metrics``, ``baseline_metrics``), an
#   entry that is not a number is dropped, since a figure nobody can compare
#   or plot says nothing (ListVersions always showed numbers only);
# * the parts inside it (dataset, refit, distribution, a manifest entry) are
#   records of their own with the same rules, except that a field they do
#   not know is refused.
#
# The reading and writing are movierec_common.json_records, shared with the
# trainer's per-kind settings records.
#
# ``format_version`` must equal FORMAT_VERSION; it changes only when a reader
# of the old format could no longer serve the new one. Two parts have owners
# of their own that validate them against the arrays they describe, and stay
# JSON objects here: ``retrieval`` (ann_index.IndexParams.from_metadata) and
# ``query_encoder`` (session_query.QueryEncoder.from_json).


class _Record(JsonRecord):
    """A part of metadata.json: fields a release does not know are refused (the top record keeps them)."""

    OMIT_NONE = True


@dataclass(frozen=True)
class FileEntry(_Record):
    """One file of a version's manifest."""

    size: int
    sha256: str


@dataclass(frozen=True)
class DatasetFacts(_Record):
    """What the version was trained on."""

    source: str = ""
    fingerprint: str = ""  # equal fingerprints: the same ratings (the regression gate compares only these)
    ratings_path: str = ""
    items_path: str = ""
    num_users: int = 0
    num_items: int = 0
    num_ratings: int = 0


@dataclass(frozen=True)
class InteractionsRecord(_Record):
    """Recorded interactions (the event store's) added to the version's base data: every one stored in
    the store ``store_id`` with a sequence up to ``watermark``. A recommender serving the version counts
    a user's interactions after the watermark as their fresh history, and those at or below it not
    again (they are in the model); a watermark from another store means nothing there.

    The counts say what became of them: ``read`` up to the watermark; ``unknown_movies`` of movies the
    items data does not list (left out); ``replaced`` (user, movie) pairs given again, by a later
    interaction or over the base data (the latest wins); ``used`` interactions that are in the training
    data; ``new_users`` users the base data did not have."""

    store_id: str = ""
    store: str = ""  # the store's description (its URL, password redacted), for people
    watermark: int = 0
    read: int = 0
    used: int = 0
    replaced: int = 0
    unknown_movies: int = 0
    new_users: int = 0


@dataclass(frozen=True)
class MovieFactsRecord(_Record):
    """The version's movie metadata (movie_metadata.MovieMetadata): its genre names, in the
    source's order (bit g of a movie's genre mask is genres[g]), and the side arrays holding
    each movie's genre mask (uint64) and release year (int16, 0 = unknown), both in the manifest.
    Absent (None) from versions published before metadata existed."""

    genres: tuple[str, ...] = ()
    genres_file: str = ""
    years_file: str = ""


@dataclass(frozen=True)
class RankingsRecord(_Record):
    """Per-user rankings the trainer computed at publish time and shipped in ``file`` (in the manifest):
    the best ``top`` unseen movies of ``users`` users, the most active first, as the recommender would
    rank them at load (recommender_service.shipped_rankings reads and checks them). Absent (None) from
    versions without an index and from those published before rankings were shipped: a recommender
    ranks those itself."""

    file: str = ""
    top: int = 0
    users: int = 0
    budget_bytes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class RefitRecord(_Record):
    """Whether the served vectors are a refit on all ratings with the evaluation run's settings."""

    enabled: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    settings_chosen_on: str = ""
    metrics_measured_on: str = ""
    trained_on: str = ""
    train_seconds: float = 0.0


ENGINE_IN_PROCESS = "in_process"


@dataclass(frozen=True)
class Distribution(_Record):
    """How training ran: engine ("in_process" or "ray_train"), workers, and the strategy's replicas;
    on Ray also the cluster's address ("local" for the trainer's private one), Ray's version and the
    seconds the workers trained (without start-up and teardown)."""

    engine: str = ENGINE_IN_PROCESS
    workers: int = 1
    num_replicas_in_sync: int = 1
    # Ray jobs only (absent from in-process versions):
    ray_address: str | None = None
    ray: str | None = None
    worker_train_seconds: float | None = None


@dataclass(frozen=True)
class VersionMetadata(_Record):
    """A version's ``metadata.json``: what was trained, how, how it measured, and its files.

    Written by the trainer (trainer_service.pipeline), read by the
    recommender's loader, the trainer's version listing, the regression gate
    and the benchmarks. See the comment above for old and new fields.
    """

    model_kind: str = ""
    job_id: str = ""
    created_at: str = ""  # ISO 8601 in UTC
    hyperparameters: dict[str, int | float] = field(default_factory=dict)  # as requested (0 = chosen on validation)
    seed: int = 0
    dataset: DatasetFacts = field(default_factory=DatasetFacts)
    evaluation_split: str = ""
    refit: RefitRecord = field(default_factory=RefitRecord)
    # What validation chose (epochs, lambda, dropout, weights...): the kind's own
    # settings record as JSON (trainer_service.kinds reads it back typed).
    settings: dict[str, Any] = field(default_factory=dict)
    settings_chosen_on: str = ""
    selection: dict[str, Any] = field(default_factory=dict)  # what validation compared, per candidate
    history_order: str = ""  # "time": seen lists are oldest first; "": movie order (before time was kept)
    query_encoder: dict[str, Any] | None = None  # session_query.QueryEncoder.to_json(); None: before sessions
    metrics: Figures = field(default_factory=dict)  # held out
    baseline_metrics: dict[str, Figures] = field(default_factory=dict)  # {"popularity": {...}}
    loss_history: tuple[float, ...] = ()
    validation_history: tuple[dict[str, float], ...] = ()
    distribution: Distribution = field(default_factory=Distribution)
    libraries: dict[str, str] = field(default_factory=dict)
    retrieval: dict[str, Any] | None = None  # ann_index.IndexParams.as_metadata(); None or exact: no index
    # Genres and years beside the SavedModel (movie_metadata); None: published before metadata
    # existed, which serves with no genres, unknown years and no genre counts.
    movies: MovieFactsRecord | None = None
    # Recorded interactions added to the base data; None: trained on the base data alone.
    interactions: InteractionsRecord | None = None
    # Per-user rankings computed by the trainer (versions with an index); None: ranked at load.
    rankings: RankingsRecord | None = None
    files: dict[str, FileEntry] = field(default_factory=dict)  # the manifest, filled in by write_version
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # fields this release does not know, kept as read

    UNKNOWN_FIELDS = "keep"

    @classmethod
    def from_text(cls, raw: bytes | str) -> VersionMetadata:
        """Parses metadata.json; ArtifactError unless it is a movierec record of this format."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{METADATA_FILE} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{METADATA_FILE} is not a movierec format_version {FORMAT_VERSION} record")
        try:
            return cls.from_json(data, METADATA_FILE)
        except RecordError as exc:
            raise ArtifactError(str(exc)) from None

    def to_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    @property
    def created_at_seconds(self) -> float | None:
        """created_at as seconds since the epoch; None when it is not a date."""
        try:
            stamp = dt.datetime.fromisoformat(self.created_at)
        except ValueError:
            return None
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).timestamp()
