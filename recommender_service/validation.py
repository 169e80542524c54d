"""Everything a candidate version must pass before it may serve, and what it
hands to the serving process when it does (:class:`ValidatedVersion`).

Availability first: a version is checked against its manifest, loaded,
smoke-tested against its own ``serving_default`` signature, and its rankings
are computed (or, shipped by the trainer beside an index, read and checked:
``recommender_service.shipped_rankings``), all before anything is swapped. This is the TensorFlow-heavy
part of loading, so it runs in a helper process
(``recommender_service.isolation``), and what comes back is flat arrays.

A version with an approximate index (see movierec_common.ann_index) is served
through it; its smoke test measures the index's recall against the exact
signature instead of demanding identical answers.

A version's ``query_encoder`` (how sessions become queries, see
movierec_common.session_query) is read here too: absent, the version serves
everything but sessions; present but unusable, the version is rejected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from movierec_common import ann_index, artifact, movie_metadata, session_query
from movierec_common.artifact import ArtifactError, FileEntry, ModelArtifact, MovieFactsRecord, VersionMetadata
from movierec_common.model_root import join
from recommender_service import shipped_rankings
from recommender_service.catalogue import ServingCatalogue, item_norms
from recommender_service.rankings import RANKING_BUDGET_BYTES, Rankings
from recommender_service.retrieval import Retriever
from recommender_service.top_k import BruteForce, FaissIVF, TopK, serving_layout


@dataclass(frozen=True)
class ValidatedVersion:
    """What validation hands to the serving process: checked, compact, flat arrays.

    No item vectors when the version has an index: the serving process reads
    the (verified) index file itself, which holds them, instead of receiving
    a second copy.
    """

    catalogue: ServingCatalogue
    rankings: Rankings
    metadata: VersionMetadata
    index_params: ann_index.IndexParams | None
    item_vectors: np.ndarray | None   # exact backend only
    item_norms: np.ndarray | None     # index backend only (cosine for SimilarItems)
    smoke: dict[str, float]
    query_encoder: session_query.QueryEncoder | None = None  # None: published before sessions

    def open_backend(self, path: str) -> TopK:
        """The TopK backend this version is served with, in the calling process."""
        return open_backend(path, self.catalogue, self.index_params, self.item_vectors, self.item_norms)


SMOKE_PROBES = 8
SMOKE_K = 10
# An approximate index may miss a few of the exact top 10; one that misses
# more than this on the probe users does not describe this model's vectors.
SMOKE_MIN_RECALL = 0.8
INDEX_CHECK_SAMPLE = 256


def smoke_test(retriever: Retriever, saved: ModelArtifact, loaded_module: Any) -> dict[str, float]:
    """The serving paths and the SavedModel's own exact signature must agree.

    Catches vectors that load but are garbage for the signature's graph, and
    proves the signature TF Serving would use actually runs. An exact backend
    must return the signature's scores; an approximate one must return k
    distinct unseen movies scored by their exact inner products, scores that
    match the signature's for the movies both found, and recall at least
    SMOKE_MIN_RECALL of the signature's top k over the probe users. Both the
    precomputed rankings and the live path are checked. ``saved`` is the
    SavedModel's arrays, ``loaded_module`` the SavedModel itself.
    """
    from movierec_common.tfenv import tensorflow

    tf = tensorflow()
    users = np.unique(np.linspace(0, saved.num_users - 1, num=min(SMOKE_PROBES, saved.num_users), dtype=int))
    k = min(SMOKE_K, saved.num_items)
    signature = loaded_module.signatures[artifact.SERVING_SIGNATURE]
    output = signature(user_id=tf.constant([str(saved.user_ids[u]) for u in users] + ["\x00unknown-user"]),
                       k=tf.constant(k, tf.int32))
    expected_ids, expected_scores = output["movie_ids"].numpy(), output["scores"].numpy()
    approximate = not retriever.top_k.exact
    recalls = []
    for row, user in enumerate(users.tolist()):
        user_id = str(saved.user_ids[user])
        valid = np.isfinite(expected_scores[row])
        theirs, their_scores = expected_ids[row][valid], expected_scores[row][valid]
        for answer in (retriever.recommend(user_id, k, exclude_seen=True), retriever.recommend_live(user, k)):
            ids = np.array([item.movie_id for item in answer.items], dtype=np.int64)
            scores = np.array([item.score for item in answer.items], dtype=np.float32)
            if ids.size != theirs.size:
                raise ArtifactError(f"smoke query for user {user_id} returned {ids.size} movies, "
                                    f"the SavedModel's signature {theirs.size}")
            if not approximate:
                if not np.allclose(scores, their_scores, rtol=1e-3, atol=1e-4):
                    raise ArtifactError(f"smoke query for user {user_id} disagrees with the SavedModel's signature")
                continue
            _check_approximate_answer(retriever, saved, user, user_id, (ids, scores), (theirs, their_scores))
            recalls.append(np.intersect1d(ids, theirs).size / max(theirs.size, 1))
    if not bool(output["cold_start"].numpy()[-1]):
        raise ArtifactError("smoke query: the signature did not flag an unknown user as cold start")
    recall = float(np.mean(recalls)) if recalls else 1.0
    if recall < SMOKE_MIN_RECALL:
        raise ArtifactError(
            f"smoke query: the approximate index finds {recall:.2f} of the SavedModel signature's exact top {k} "
            f"on {users.size} probe users (at least {SMOKE_MIN_RECALL} required)")
    return {"smoke_probes": float(users.size), "smoke_recall_at_10": round(recall, 4)}


def _check_approximate_answer(retriever: Retriever, saved: ModelArtifact, user: int, user_id: str,
                              ours: tuple[np.ndarray, np.ndarray], signature: tuple[np.ndarray, np.ndarray]) -> None:
    """One approximate answer (ids, scores) against the signature's (ids, scores) for the same user."""
    ids, scores = ours
    theirs, their_scores = signature
    positions = np.array([retriever.movie_index(int(i)) for i in ids], dtype=np.int64)
    problem = ""
    if np.unique(ids).size != ids.size:
        problem = "returned a movie twice"
    elif np.isin(positions, saved.seen_items(user)).any():
        problem = "returned a movie the user has seen"
    elif not np.allclose(scores, saved.item_vectors[positions] @ saved.user_vectors[user], rtol=1e-4, atol=1e-5):
        problem = "returned scores that are not the movies' inner products"
    else:
        common, ours_at, theirs_at = np.intersect1d(ids, theirs, return_indices=True)
        if not np.allclose(scores[ours_at], their_scores[theirs_at], rtol=1e-3, atol=1e-4):
            problem = "disagrees with the SavedModel's signature on the scores of the movies both found"
    if problem:
        raise ArtifactError(f"smoke query for user {user_id} {problem}")


def read_query_encoder(metadata: VersionMetadata, num_items: int, dim: int) -> session_query.QueryEncoder | None:
    """The version's session rule; None for versions published before sessions existed."""
    if metadata.query_encoder is None:
        return None
    try:
        return session_query.QueryEncoder.from_json(metadata.query_encoder, num_items, dim)
    except session_query.EncoderError as exc:
        raise ArtifactError(str(exc)) from None


def _session_smoke_test(retriever: Retriever) -> None:
    """A session of the most popular movies must be answerable, with finite scores, for a visitor and a user.

    Catches an encoder that parses but does not fit the served arrays (a
    pooled part reading the wrong columns, scales that overflow) before a
    caller does.
    """
    if retriever.sessions is None:
        return
    catalogue = retriever.catalogue
    recent = catalogue.movie_ids[catalogue.popular[:3]].tolist()
    k = min(SMOKE_K, catalogue.num_items)
    for user_id in ("\x00session-smoke", str(catalogue.user_ids[0])):
        answer = retriever.recommend_session(user_id, k, recent, exclude_seen=False)
        if len(answer.items) != k or not all(np.isfinite(item.score) for item in answer.items):
            raise ArtifactError(
                f"smoke query: a session of {len(recent)} movies did not get {k} finitely scored movies "
                f"({session_query.METADATA_KEY} does not fit the model's vectors)")


def open_backend(path: str, catalogue: ServingCatalogue, params: ann_index.IndexParams | None,
                 item_vectors: np.ndarray | None, item_norms: np.ndarray | None) -> TopK:
    """The exact scan over ``item_vectors``, or the version's index file (``params``) with ``item_norms``."""
    if params is None:
        if item_vectors is None:
            raise ArtifactError("a version without an index must hand over its item vectors")
        return BruteForce(item_vectors)
    if item_norms is None:
        raise ArtifactError("a version with an index must hand over its item norms")
    dim = int(catalogue.user_vectors.shape[1])
    index = ann_index.read(join(path, params.file), params, catalogue.num_items, dim)
    return FaissIVF(index, item_norms, params.max_first_fetch)


def _check_index_holds_the_model(backend: FaissIVF, saved: ModelArtifact) -> None:
    """A sample of the index's vectors must be the SavedModel's, bit for bit."""
    rng = np.random.default_rng(0)
    n = saved.num_items
    sample = np.unique(np.concatenate([[0, n - 1], rng.integers(0, n, size=min(INDEX_CHECK_SAMPLE, n))]))
    if not np.array_equal(backend.vectors(sample), saved.item_vectors[sample]):
        raise ArtifactError(
            f"{ann_index.INDEX_FILE} holds other vectors than the SavedModel (built from another model?)")


def _check_movie_files_listed(record: MovieFactsRecord | None, manifest: dict[str, FileEntry]) -> None:
    """A version's movie metadata files are served only when its manifest vouches for them."""
    for name in () if record is None else (record.genres_file, record.years_file):
        if name not in manifest:
            raise ArtifactError(f"metadata.json says the version has movie metadata, but its manifest does not "
                                f"list {name[:100]}")


def validate_version(path: str, ranking_budget_bytes: int = RANKING_BUDGET_BYTES) -> ValidatedVersion:
    """Everything a candidate must pass before it may serve. Raises ArtifactError.

    This is the TensorFlow-heavy part (load the SavedModel, run its
    signature, rank every user within the budget);
    :class:`~recommender_service.isolation.IsolatedLoader` runs it in a
    helper process.
    """
    clock = _PhaseClock()
    metadata = artifact.read_metadata(path)
    params = ann_index.IndexParams.from_metadata(metadata.retrieval)
    manifest = metadata.files
    artifact.verify_manifest(path, manifest)
    if params is not None and params.file not in manifest:
        raise ArtifactError(
            f"metadata.json says the version has an index, but its manifest does not list {params.file}")
    _check_movie_files_listed(metadata.movies, manifest)
    clock.lap("manifest")
    saved, module = artifact.load(path)
    encoder = read_query_encoder(metadata, saved.num_items, int(saved.item_vectors.shape[1]))
    catalogue = ServingCatalogue.from_artifact(saved, movie_metadata.read(path, metadata.movies, saved.num_items))
    norms = None if params is None else item_norms(saved.item_vectors)
    item_vectors = None if params is not None else serving_layout(saved.item_vectors)
    clock.lap("savedmodel")
    backend = open_backend(path, catalogue, params, item_vectors, norms)
    if isinstance(backend, FaissIVF):  # the version has an index (params)
        _check_index_holds_the_model(backend, saved)
    clock.lap("index")
    shipped = None
    if isinstance(backend, FaissIVF):  # rankings ship only beside an index
        shipped = shipped_rankings.read(path, metadata.rankings, manifest, catalogue, backend, ranking_budget_bytes)
    retriever = Retriever(catalogue, backend, rankings=shipped, ranking_budget_bytes=ranking_budget_bytes,
                          query_encoder=encoder)
    clock.lap("rankings")
    smoke = smoke_test(retriever, saved, module)
    _session_smoke_test(retriever)
    clock.lap("smoke")
    return ValidatedVersion(catalogue=catalogue, rankings=retriever.rankings, metadata=metadata, index_params=params,
                            item_vectors=item_vectors, item_norms=norms,
                            smoke={**smoke, "rankings_shipped": float(shipped is not None), **clock.laps},
                            query_encoder=encoder)


class _PhaseClock:
    """Seconds per validation phase, logged with the version (where does a slow load go?)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[f"{name}_seconds"] = round(now - self._last, 3)
        self._last = now
