"""The loader: from a version folder the source names to a warmed
:class:`~recommender_service.model.LoadedModel` ready to swap in
(TF Serving's loader, one version at a time).

Its steps, in order, each able to stop the version:

1. with publishing keys, check the version's signature
   (:func:`check_signature`): only ``metadata.json`` and ``signature.json``
   are read, so an unsigned or wrongly signed version is refused before
   anything is downloaded or run, and costs two small reads;
2. on an object store, copy the version to local disk
   (:class:`~recommender_service.version_cache.VersionCache`); with keys,
   the copy's ``metadata.json`` must be the bytes that were signed (its
   manifest then binds every other file, which validation verifies);
3. validate it (``recommender_service.validation``), normally in the helper
   process (``recommender_service.isolation``);
4. check that the folder did not change meanwhile: what was validated must
   be what is served (with keys, its ``metadata.json`` is still the signed one);
5. open its TopK backend in this process and warm the request path.

What a failure means is the caller's to decide, by its type:
``model_root.RootUnreachable`` says nothing about the version (try again at
the next poll); anything else rejects it (``ArtifactError`` says why).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from movierec_common.artifact import METADATA_FILE, SIGNATURE_FILE, ArtifactError
from movierec_common.model_root import folder_fingerprint, join, read_bytes
from movierec_common.signing import PublishingKeys, SignatureError, check_version_signature
from recommender_service.model import LoadedModel
from recommender_service.retrieval import Retriever
from recommender_service.validation import ValidatedVersion
from recommender_service.version_cache import VersionCache

# What validates one version's local folder: validation.validate_version in
# this process, or an isolation.IsolatedLoader that runs it in the helper.
Validate = Callable[[str], ValidatedVersion]


class VersionLoader:
    """Loads one version at a time; ``cache`` is None for a local model root (versions are read in place).

    With ``keys`` (the recommender's --publish-key-file) only versions signed by one of them load.
    """

    def __init__(self, validate: Validate, cache: VersionCache | None, keys: PublishingKeys | None = None):
        self._validate = validate
        self._cache = cache
        self._keys = keys

    def load(self, version: int, path: str, fingerprint: str) -> tuple[LoadedModel, dict[str, float]]:
        """The version at ``path`` (its folder's ``fingerprint`` as listed) loaded and warmed, with what
        validation measured (smoke test figures, seconds per phase) for the log.

        Raises RootUnreachable when the root could not be read, anything else when the version is bad.
        """
        started = time.monotonic()
        local = path
        signed = None if self._keys is None else check_signature(self._keys, version, path)
        try:
            if self._cache is not None:
                local = self._cache.copy(version, path, fingerprint)
            if signed is not None:
                _check_still_signed(local, signed)
            validated = self._validate(local)
            if folder_fingerprint(path) != fingerprint:
                raise ArtifactError("the folder changed while it was validated; it will be checked again")
            if signed is not None:
                _check_still_signed(local, signed)
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


def check_signature(keys: PublishingKeys, version: int, path: str) -> str:
    """The signed sha256 of the version's ``metadata.json``, read from the root with its ``signature.json``
    and nothing else. Raises ArtifactError when the version is not signed by one of ``keys`` as this
    version number (or is not completely published yet), RootUnreachable when the root cannot be read."""
    try:
        metadata = read_bytes(join(path, METADATA_FILE))
    except FileNotFoundError:
        raise ArtifactError(f"{METADATA_FILE} is missing (the version is not completely published yet)") from None
    try:
        signature: bytes | None = read_bytes(join(path, SIGNATURE_FILE))
    except FileNotFoundError:
        signature = None
    try:
        return check_version_signature(keys, version, metadata, signature)
    except SignatureError as exc:
        raise ArtifactError(str(exc)) from None


def _check_still_signed(local: str, signed_sha256: str) -> None:
    """The ``metadata.json`` about to be validated (or just validated) is the one whose signature was checked.

    On an object store ``local`` is this replica's own copy, so after this
    check nobody else can change it; a local root is read in place, and is
    checked again after validation.
    """
    try:
        digest = hashlib.sha256(read_bytes(join(local, METADATA_FILE))).hexdigest()
    except FileNotFoundError:
        digest = ""
    if digest != signed_sha256:
        raise ArtifactError(f"{METADATA_FILE} changed after its signature was checked; it will be checked again")


def serving_facts(retriever: Retriever, version: ValidatedVersion) -> dict[str, float]:
    """How a version is served, for GetModelStatus (prefixed, beside its held-out metrics)."""
    facts = {"serving_ann": 0.0 if retriever.top_k.exact else 1.0,
             "serving_ranked_users": float(retriever.rankings.num_users),
             # 1: the per-user rankings were shipped by the trainer; 0: computed at load
             "serving_rankings_shipped": version.smoke.get("rankings_shipped", 0.0),
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
    retriever.top_k.warm()
    if retriever.sessions is not None:
        recent = version.catalogue.movie_ids[:10].tolist()
        for user_id in [*user_ids[:4].tolist(), "\x00cold"]:
            retriever.recommend_session(user_id, 10, recent)
    return retriever
