"""Rankings the trainer ships beside an index: the loader's answer, read instead of computed, and refused
when they are not this version's (recommender_service.shipped_rankings)."""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
import pytest

from movierec_common import ann_index
from movierec_common.artifact import ArtifactError, FileEntry, VersionMetadata
from recommender_service import shipped_rankings
from recommender_service.catalogue import ServingCatalogue, item_norms
from recommender_service.rankings import Rankings
from recommender_service.top_k import FaissIVF
from recommender_service.validation import validate_version
from tests.artifacts import clustered_artifact, tiny_artifact
from trainer_service.publisher import publish

MIN_ITEMS = 1_000


@pytest.fixture(scope="module")
def version():
    """A 4,000-movie model with its index and shipped rankings, as the trainer's pipeline makes them."""
    art = clustered_artifact(users=300, items=4_000, dim=16, seed=5)
    index_files, retrieval = ann_index.files_for_version(art.item_vectors, art.user_vectors, min_items=MIN_ITEMS)
    files, record = shipped_rankings.files_for_version(art, index_files, retrieval)
    return art, index_files, retrieval, files, record


def _backend(art, index_files, retrieval) -> FaissIVF:
    params = ann_index.IndexParams.from_metadata(retrieval)
    index = ann_index.deserialize(index_files[params.file], params, art.num_items, art.item_vectors.shape[1])
    return FaissIVF(index, item_norms(art.item_vectors), params.max_first_fetch)


def _read(tmp_path, art, index_files, retrieval, payload: bytes, record, budget=shipped_rankings.RANKING_BUDGET_BYTES):
    (tmp_path / record.file).write_bytes(payload)
    manifest = {record.file: FileEntry(size=len(payload), sha256="")}
    return shipped_rankings.read(str(tmp_path), record, manifest, ServingCatalogue.from_artifact(art),
                                 _backend(art, index_files, retrieval), budget)


def _arrays(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(payload)) as arrays:
        return {key: arrays[key].copy() for key in arrays.files}


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_shipped_rankings_are_exactly_what_the_loader_computes_and_a_smaller_budget_takes_its_share(
        tmp_path, version):
    art, index_files, retrieval, files, record = version
    assert record.file == shipped_rankings.RANKINGS_FILE and record.users == art.num_users and record.top == 100
    catalogue = ServingCatalogue.from_artifact(art)
    for budget in (shipped_rankings.RANKING_BUDGET_BYTES, 120 * Rankings.bytes_per_user(100)):
        shipped = _read(tmp_path, art, index_files, retrieval, files[record.file], record, budget)
        computed = Rankings.compute(catalogue, _backend(art, index_files, retrieval), budget)
        assert shipped is not None and shipped.num_users == computed.num_users == min(art.num_users, budget // 808)
        for name in ("rows", "indices", "scores", "counts"):
            np.testing.assert_array_equal(getattr(shipped, name), getattr(computed, name), err_msg=name)


def test_a_budget_beyond_what_was_shipped_or_another_depth_ranks_at_load(tmp_path, version):
    art, index_files, retrieval, files, _ = version
    smaller, record = shipped_rankings.files_for_version(art, index_files, retrieval,
                                                         budget_bytes=100 * Rankings.bytes_per_user(100))
    assert record.users == 100
    assert _read(tmp_path, art, index_files, retrieval, smaller[record.file], record) is None
    assert _read(tmp_path, art, index_files, retrieval, smaller[record.file], record,
                 budget=60 * Rankings.bytes_per_user(100)).num_users == 60
    deeper = dataclasses.replace(record, top=200)
    assert _read(tmp_path, art, index_files, retrieval, smaller[record.file], deeper) is None


def test_exact_versions_ship_nothing():
    art = tiny_artifact(users=20, items=300, seed=1)
    index_files, retrieval = ann_index.files_for_version(art.item_vectors, art.user_vectors, min_items=MIN_ITEMS)
    assert shipped_rankings.files_for_version(art, index_files, retrieval) == ({}, None)


def _tampered(arrays, change):
    arrays = {key: value.copy() for key, value in arrays.items()}
    change(arrays)
    return _npz(arrays)


def _swap_first_two(arrays):
    arrays["indices"][:, [0, 1]] = arrays["indices"][:, [1, 0]]
    arrays["scores"][:, [0, 1]] = arrays["scores"][:, [1, 0]]


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: a["scores"].__setitem__(np.s_[:, 3], a["scores"][:, 3] + 0.01), "not the movies' inner products"),
    (_swap_first_two, "not in answer order"),
    (lambda a: a["indices"].__setitem__(np.s_[:, 1], a["indices"][:, 0]), "names a movie twice"),
    (lambda a: a["users"].__setitem__(np.s_[:], a["users"][::-1]), "not distinct ascending users"),
    (lambda a: a["counts"].__setitem__(0, 7), r"min\(100, unseen movies\)"),
    (lambda a: a["indices"].__setitem__((0, 0), 4_000), "outside the version's catalogue"),
    (lambda a: a.__setitem__("scores", a["scores"].astype(np.float64)), "scores is float64"),
    (lambda a: a.pop("counts"), "lacks the arrays counts"),
])
def test_rankings_that_are_not_this_versions_are_refused(tmp_path, version, change, message):
    art, index_files, retrieval, files, record = version
    payload = _tampered(_arrays(files[record.file]), change)
    with pytest.raises(ArtifactError, match=message):
        _read(tmp_path, art, index_files, retrieval, payload, record)


def test_rankings_of_another_model_or_for_other_users_are_refused(tmp_path, version):
    art, index_files, retrieval, files, record = version
    other = dataclasses.replace(art, user_vectors=art.user_vectors[::-1].copy())  # same shapes, other users' tastes
    other_files, _ = shipped_rankings.files_for_version(other, index_files, retrieval)
    with pytest.raises(ArtifactError, match="not the movies' inner products|names a movie the user has seen"):
        _read(tmp_path, art, index_files, retrieval, other_files[record.file], record)
    fewer, fewer_record = shipped_rankings.files_for_version(art, index_files, retrieval,
                                                             budget_bytes=50 * Rankings.bytes_per_user(100))
    arrays = _arrays(fewer[fewer_record.file])
    arrays["users"] = np.arange(50, dtype=np.int32)  # the first 50 users, not the 50 most active
    with pytest.raises(ArtifactError, match="other users than the 50 most active"):
        _read(tmp_path, art, index_files, retrieval, _npz(arrays), fewer_record,
              budget=50 * Rankings.bytes_per_user(100))
    with pytest.raises(ArtifactError, match="not a readable .npz"):
        _read(tmp_path, art, index_files, retrieval, b"not a zip file", record)


def test_a_published_version_is_served_from_its_shipped_rankings_and_a_wrong_file_rejects_it(tmp_path, version):
    art, index_files, retrieval, files, record = version
    metadata = VersionMetadata(model_kind="test", retrieval=retrieval, rankings=record)
    root = str(tmp_path / "models")
    publish(root, art, metadata, {**index_files, **files})
    validated = validate_version(os.path.join(root, "1"))
    assert validated.smoke["rankings_shipped"] == 1.0 and validated.rankings.num_users == art.num_users
    shipped = _read(tmp_path, art, index_files, retrieval, files[record.file], record)
    np.testing.assert_array_equal(validated.rankings.indices, shipped.indices)

    # The same version without the record is ranked at load, to the same answer.
    publish(root, art, VersionMetadata(model_kind="test", retrieval=retrieval), index_files)
    computed = validate_version(os.path.join(root, "2"))
    assert computed.smoke["rankings_shipped"] == 0.0
    np.testing.assert_array_equal(computed.rankings.indices, validated.rankings.indices)
    np.testing.assert_array_equal(computed.rankings.scores, validated.rankings.scores)

    # A file the manifest vouches for, but written for another model: the version is refused.
    other = dataclasses.replace(art, user_vectors=-art.user_vectors)
    wrong, _ = shipped_rankings.files_for_version(other, index_files, retrieval)
    publish(root, art, metadata, {**index_files, **wrong})
    with pytest.raises(ArtifactError, match=shipped_rankings.RANKINGS_FILE):
        validate_version(os.path.join(root, "3"))

    # metadata.json naming a rankings file its manifest does not list: refused before it is read.
    folder = os.path.join(root, "1")
    with open(os.path.join(folder, "metadata.json")) as handle:
        data = json.load(handle)
    data["rankings"]["file"] = "elsewhere.npz"
    with open(os.path.join(folder, "metadata.json"), "w") as handle:
        json.dump(data, handle)
    with pytest.raises(ArtifactError, match="manifest does not list elsewhere.npz"):
        validate_version(folder)
