"""The loader: from a version folder the source names to a warmed
:class:`~recommender_service.model.LoadedModel` ready to swap in
(TF Serving's loader, one version at a time).

Its steps, in order, each able to stop the version:

1. (room for a signature check of the version's manifest: it belongs first,
   before anything is downloaded, so an unsigned version costs nothing);
2. on an object store, copy the version to local disk
   (:class:`~recommender_service.version_cache.VersionCache`);
3. validate it (``recommender_service.validation``), normally in the helper
   process (``recommender_service.isolation``);
4. check that the folder did not change meanwhile: what was validated must
   be what is served;
5. open its TopK backend in this process and warm the request path.

What a failure means is the caller's to decide, by its type:
``model_root.RootUnreachable`` says nothing about the version (try again at
the next poll); anything else rejects it (``ArtifactError`` says why).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from movierec_common.artifact import ArtifactError
from movierec_common.model_root import folder_fingerprint
from recommender_service.model import LoadedModel
from recommender_service.retrieval import Retriever
from recommender_service.validation import ValidatedVersion
from recommender_service.version_cache import VersionCache

# What validates one version's local folder: validation.validate_version in
# this process, or an isolation.IsolatedLoader that runs it in the helper.
Validate = Callable[[str], ValidatedVersion]


class VersionLoader:
    """Loads one version at a time; ``cache`` is None for a local model root (versions are read in place)."""

    def __init__(self, validate: Validate, cache: VersionCache | None):
        self._validate = validate
        self._cache = cache

    def load(self, version: int, path: str, fingerprint: str) -> tuple[LoadedModel, dict[str, float]]:
        """The version at ``path`` (its folder's ``fingerprint`` as listed) loaded and warmed, with what
        validation measured (smoke test figures, seconds per phase) for the log.

        Raises RootUnreachable when the root could not be read, anything else when the version is bad.
        """
        started = time.monotonic()
        local = path
        # Step 1, the manifest's signature check, goes here: before anything is downloaded.
        try:
            if self._cache is not None:
                local = self._cache.copy(version, path, fingerprint)
            validated = self._validate(local)
            if folder_fingerprint(path) != fingerprint:
                raise ArtifactError("the folder changed while it was validated; it will be checked again")
            retriever = warmed_retriever(validated, local)
        except BaseException:  # whatever it means (the caller decides), the copy is of no use
            if self._cache is not None:
                self._cache.discard(local)
            raise
        if self._cache is not None:
            self._cache.keep_only(local)  # only the copy about to be served is kept
        load_seconds = round(time.monotonic() - started, 3)
        model = LoadedModel(version=version, retriever=retriever, metadata=validated.metadata, loaded_at=time.time(),
                            serving={**serving_facts(retriever, validated), "serving_load_seconds": load_seconds})
        return model, validated.smoke


def serving_facts(retriever: Retriever, version: ValidatedVersion) -> dict[str, float]:
    """How a version is served, for GetModelStatus (prefixed, beside its held-out metrics)."""
    facts = {"serving_ann": 0.0 if retriever.top_k.exact else 1.0,
             "serving_ranked_users": float(retriever.rankings.num_users),
             "serving_sessions": 0.0 if retriever.sessions is None else 1.0}
    if version.index_params is not None:
        facts.update(serving_ann_nlist=float(version.index_params.nlist),
                     serving_ann_nprobe=float(version.index_params.nprobe))
    facts.update({f"serving_{name}": value for name, value in version.smoke.items() if name.startswith("smoke_")})
    return facts


def warmed_retriever(version: ValidatedVersion, path: str) -> Retriever:
    """The version's Retriever in this process, its request path warmed (first calls allocate and fault
    pages in, which the first callers would otherwise pay)."""
    retriever = Retriever(version.catalogue, version.open_backend(path), rankings=version.rankings,
                          query_encoder=version.query_encoder)
    user_ids = version.catalogue.user_ids
    for user_id in user_ids[:32].tolist() + ["\x00cold"]:
        retriever.recommend(user_id, 10)
    for user_index in range(min(4, len(user_ids))):
        retriever.recommend_live(user_index, 10)
    retriever.similar_items(int(version.catalogue.movie_ids[0]), 10)
    if retriever.sessions is not None:
        recent = version.catalogue.movie_ids[:10].tolist()
        for user_id in [*user_ids[:4].tolist(), "\x00cold"]:
            retriever.recommend_session(user_id, 10, recent)
    return retriever
