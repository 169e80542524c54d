"""Per-user rankings computed by the trainer at publish time and shipped inside the version.

Why: at a million movies, ranking every user's best unseen movies was 11 of a
reload's ~15 CPU-seconds in the recommender's loader (1M movies x 64, 50,000
users), and the calls being served felt it: p99 across a reload was 4 ms on a
quiet machine against 1 ms between reloads. The trainer holds the vectors and
the index already, so it ranks once, off the serving machine, and ships the
arrays beside the index, like the index itself.

Rules, so a shipped ranking is always the answer the recommender would have
computed:

* **The recommender's own code.** :func:`files_for_version` opens the very
  index bytes the version ships with the serving backend
  (:class:`~recommender_service.top_k.FaissIVF`) and calls
  :meth:`Rankings.compute`, the loader's function, with the recommender's
  default budget. Only versions with an index ship rankings; exact versions
  are ranked at load, which their size bounds (``EXACT_RANKING_MAX_SCORES``).
* **Verified before use** (:func:`read`): the file is in the manifest (so its
  bytes are the ones published, signed when the trainer signs); its arrays
  have the shapes and ranges the version's catalogue implies; the ranked users
  are exactly those the activity rule picks; every row holds as many movies as
  the user has unseen (up to the depth); and on a sample of rows the movies are
  distinct, unseen, in the tie rule's order, with scores equal to their inner
  products with the user's vector. A file that fails any of this rejects the
  version (it was written wrong); the smoke test then compares the served
  answers with the SavedModel's own signature, as for rankings computed here.
* **Across machines.** On the trainer's own CPU and library build a shipped
  row is bit for bit the loader's (``FaissIVF.top_k_batch`` mirrors the live
  path's products). OpenBLAS and faiss choose their SIMD kernels by CPU, so
  on another machine a score may differ in its last bit, and two movies whose
  scores tie exactly may come in the other order; the check compares scores
  within float32 tolerance for that reason.
* **Used only where they fit.** A recommender with a smaller ranking budget
  takes the most active users' rows (a prefix of the same rule); one with a
  larger budget, or another depth, ranks at load as before. Hidden movies,
  filters and fresh histories are handled after the table, exactly as for
  rankings computed at load (:class:`~recommender_service.retrieval.Retriever`).
"""

from __future__ import annotations

import io
import os
import time
import zipfile

import numpy as np

from movierec_common import ann_index
from movierec_common.artifact import ArtifactError, FileEntry, ModelArtifact, RankingsRecord, check_file_name
from recommender_service.catalogue import ServingCatalogue, item_norms
from recommender_service.rankings import PRECOMPUTED_TOP, RANKING_BUDGET_BYTES, Rankings
from recommender_service.top_k import FaissIVF

RANKINGS_FILE = "rankings.npz"
_ARRAYS = {"users": np.int32, "indices": np.int32, "scores": np.float32, "counts": np.int32}
# Rows whose movies are re-scored against the user's vector when a version is loaded (a few ms).
SCORE_CHECK_SAMPLE = 256


def files_for_version(artifact: ModelArtifact, index_files: dict[str, bytes], retrieval: dict | None,
                      budget_bytes: int = RANKING_BUDGET_BYTES) -> tuple[dict[str, bytes], RankingsRecord | None]:
    """What the trainer adds beside an index: ``({file: bytes}, metadata.json's "rankings" record)``.

    Nothing for a version without an index (``retrieval`` exact or None).
    """
    params = ann_index.IndexParams.from_metadata(retrieval)
    if params is None:
        return {}, None
    started = time.monotonic()
    num_items, dim = artifact.item_vectors.shape
    index = ann_index.deserialize(index_files[params.file], params, num_items, dim)
    backend = FaissIVF(index, item_norms(artifact.item_vectors), params.max_first_fetch)
    rankings = Rankings.compute(ServingCatalogue.from_artifact(artifact), backend, budget_bytes)
    buffer = io.BytesIO()
    np.savez(buffer, users=rankings.users.astype(np.int32), indices=rankings.indices, scores=rankings.scores,
             counts=rankings.counts)
    record = RankingsRecord(file=RANKINGS_FILE, top=rankings.top, users=rankings.num_users,
                            budget_bytes=budget_bytes, seconds=round(time.monotonic() - started, 3))
    return {RANKINGS_FILE: buffer.getvalue()}, record


def read(version_dir: str, record: RankingsRecord | None, manifest: dict[str, FileEntry],
         catalogue: ServingCatalogue, backend: FaissIVF, budget_bytes: int) -> Rankings | None:
    """The shipped rankings this recommender's budget covers, checked; None when it should rank itself
    (nothing shipped, another depth, or a budget covering users the trainer did not rank).

    Raises ArtifactError when the file is not what the version says it is.
    """
    if record is None:
        return None
    check_file_name(record.file)
    if record.file not in manifest:
        raise ArtifactError(f"metadata.json says the version ships rankings, but its manifest does not list "
                            f"{record.file[:100]}")
    top = min(PRECOMPUTED_TOP, catalogue.num_items)
    if record.top != top:
        return None
    wanted = Rankings.users_to_rank(catalogue, budget_bytes, top, exact=False)
    if wanted.size > record.users:
        return None
    shipped = _load(os.path.join(version_dir, record.file), record, catalogue)
    _check(shipped, record.file, catalogue, backend)
    return shipped.restricted_to(wanted)


def _load(path: str, record: RankingsRecord, catalogue: ServingCatalogue) -> Rankings:
    name, top = record.file, record.top
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = sorted(set(_ARRAYS) - set(arrays.files))
            if missing:
                raise ArtifactError(f"{name} lacks the arrays {', '.join(missing)}")
            loaded = {key: np.asarray(arrays[key]) for key in _ARRAYS}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{name} is not a readable .npz file: {exc}") from exc
    users, indices, scores, counts = (loaded[key] for key in _ARRAYS)
    ranked = record.users
    for key, dtype in _ARRAYS.items():
        shape = (ranked, top) if key in ("indices", "scores") else (ranked,)
        if loaded[key].dtype != dtype or loaded[key].shape != shape:
            raise ArtifactError(f"{name}: {key} is {loaded[key].dtype} {loaded[key].shape}, metadata.json "
                                f"implies {np.dtype(dtype)} {shape}")
    if ranked and (users[0] < 0 or users[-1] >= catalogue.num_users or (np.diff(users) <= 0).any()):
        raise ArtifactError(f"{name}: the ranked users are not distinct ascending users of the version")
    if ranked and (indices.min() < 0 or indices.max() >= catalogue.num_items):
        raise ArtifactError(f"{name} names movies outside the version's catalogue")
    return Rankings.of_users(catalogue.num_users, top, users.astype(np.int64), indices, scores, counts)


def _check(shipped: Rankings, name: str, catalogue: ServingCatalogue, backend: FaissIVF) -> None:
    """The rows belong to this version's users, seen lists and vectors (see the module's rules)."""
    users = shipped.users
    if not np.array_equal(users, Rankings.users_to_rank(
            catalogue, shipped.num_users * Rankings.bytes_per_user(shipped.top), shipped.top, exact=False)):
        raise ArtifactError(f"{name} ranks other users than the {shipped.num_users:,} most active ones")
    unseen = catalogue.num_items - np.diff(catalogue.seen_indptr)[users]
    if not np.array_equal(shipped.counts, np.minimum(shipped.top, unseen)):
        raise ArtifactError(f"{name}: some users' rankings do not hold min({shipped.top}, unseen movies) movies")
    if users.size == 0:
        return
    sample = np.random.default_rng(0).choice(users.size, size=min(SCORE_CHECK_SAMPLE, users.size), replace=False)
    for row in np.unique(np.concatenate([sample, [0, users.size - 1]])).tolist():
        count, user = int(shipped.counts[row]), int(users[row])
        movies, scores = shipped.indices[row, :count], shipped.scores[row, :count]
        seen = catalogue.seen_indices[catalogue.seen_indptr[user]:catalogue.seen_indptr[user + 1]]
        exact = backend.vectors(movies) @ catalogue.user_vectors[user]
        problem = ""
        if np.unique(movies).size != count:
            problem = "names a movie twice"
        elif np.isin(movies, seen).any():
            problem = "names a movie the user has seen"
        elif not np.allclose(scores, exact, rtol=1e-5, atol=1e-6):
            problem = "holds scores that are not the movies' inner products with the user's vector"
        elif not np.array_equal(np.lexsort((movies, -scores)), np.arange(count)):
            problem = "is not in answer order (best score first, ties to the lower index)"
        if problem:
            raise ArtifactError(f"{name}: the ranking of user {catalogue.user_ids[user]} {problem}")
