"""Publishing, the artifact format, retrieval and the registry, on real
SavedModels written to a temp folder."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from movierec.v1.vocabulary import REJECTED, SERVING
from movierec_common import artifact
from movierec_common.artifact import VersionMetadata
from movierec_common.model_root import list_versions, write_serving_marker
from recommender_service.registry import ModelRegistry
from recommender_service.retrieval import Retriever
from recommender_service.top_k import top_k_indices
from recommender_service.validation import validate_version
from tests.artifacts import tiny_artifact
from trainer_service.publisher import apply_retention, publish, remove_stale_temp_folders

METADATA = VersionMetadata(model_kind="test", metrics={"recall_at_10": 0.5})
NO_ITEMS = np.zeros(0, np.int32)


def test_top_k_matches_brute_force_and_breaks_ties_by_index():
    rng = np.random.default_rng(3)
    for _ in range(200):
        scores = rng.integers(0, 5, size=40).astype(np.float32)  # many ties
        scores[rng.choice(40, size=5, replace=False)] = -np.inf
        k = int(rng.integers(1, 45))
        expected = sorted(np.flatnonzero(np.isfinite(scores)), key=lambda i: (-scores[i], i))[:k]
        assert top_k_indices(scores, k).tolist() == expected


def test_retriever_is_exact_excludes_seen_and_falls_back_to_popularity():
    art = tiny_artifact()
    retriever = Retriever(art)
    for user in range(art.num_users):
        scores = art.item_vectors @ art.user_vectors[user]
        seen = set(art.seen_items(user).tolist())
        best = [i for i in np.argsort(-scores, kind="stable") if i not in seen][:10]
        got = retriever.recommend(art.user_ids[user], 10)
        assert [s.movie_id for s in got.items] == art.movie_ids[best].tolist()
        assert not got.cold_start
        with_seen = retriever.recommend(art.user_ids[user], art.num_items, exclude_seen=False)
        assert len(with_seen.items) == art.num_items
    cold = retriever.recommend("stranger", 5)
    assert cold.cold_start
    assert [s.movie_id for s in cold.items] == art.movie_ids[np.argsort(-art.popularity, kind="stable")[:5]].tolist()
    movie, answer = retriever.similar_items(101, 5)
    similar = answer.items
    assert movie.movie_id == 101 and 101 not in [s.movie_id for s in similar] and len(similar) == 5


def test_validate_refuses_inconsistent_arrays():
    art = tiny_artifact()
    bad = [
        dataclasses.replace(art, user_vectors=art.user_vectors[:, :4]),
        dataclasses.replace(art, item_vectors=art.item_vectors[:-1]),
        dataclasses.replace(art, seen_indices=art.seen_indices + 1000),
        dataclasses.replace(art, popularity=np.full(art.num_items, np.nan, np.float32)),
        dataclasses.replace(art, movie_ids=np.zeros(art.num_items, np.int64)),
    ]
    for candidate in bad:
        with pytest.raises(artifact.ArtifactError):
            candidate.validate()


def test_publish_numbers_versions_and_the_signature_agrees_with_numpy(tmp_path):
    root = str(tmp_path / "models")
    art = tiny_artifact()
    assert publish(root, art, METADATA) == 1
    assert publish(root, art, METADATA) == 2
    assert list_versions(root) == [1, 2]
    metadata = artifact.read_metadata(f"{root}/2")
    assert metadata.model_kind == "test" and "saved_model.pb" in metadata.files
    loaded, module = artifact.load(f"{root}/2")
    np.testing.assert_array_equal(loaded.user_vectors, art.user_vectors)
    assert loaded.titles.tolist() == art.titles.tolist()
    out = module.signatures["serving_default"](user_id=np.array([b"3", b"nobody"]), k=np.int32(5))
    expected = [s.movie_id for s in Retriever(art).recommend("3", 5).items]
    assert out["movie_ids"].numpy()[0].tolist() == expected
    assert out["cold_start"].numpy().tolist() == [False, True]


def test_failed_publish_leaves_nothing_and_stale_temp_folders_are_removed(tmp_path):
    root = tmp_path / "models"
    broken = dataclasses.replace(tiny_artifact(), item_vectors=np.zeros((3, 8), np.float32))
    with pytest.raises(artifact.ArtifactError):
        publish(str(root), broken, METADATA)
    assert list(root.iterdir()) == []
    (root / ".tmp-7-deadbeef").mkdir()
    assert remove_stale_temp_folders(str(root), min_age_seconds=0) == [".tmp-7-deadbeef"]


def test_retention_keeps_newest_and_spares_versions_in_use(tmp_path):
    root = str(tmp_path / "models")
    for _ in range(5):
        publish(root, tiny_artifact(), METADATA)
    write_serving_marker(root, "replica-a", 1)
    assert apply_retention(root, keep=2) == [2, 3]
    assert list_versions(root) == [1, 4, 5]


def test_registry_serves_newest_valid_and_does_not_retry_a_bad_folder(tmp_path):
    root = tmp_path / "models"
    publish(str(root), tiny_artifact(seed=1), METADATA)
    shutil.copytree(root / "1", root / "2")
    (root / "2" / "variables" / "variables.data-00000-of-00001").write_bytes(b"truncated")
    shutil.copytree(root / "1", root / "3")
    (root / "3" / "metadata.json").write_text("{not json")

    attempts = []

    def loader(path):  # the registry's own validation, counted
        attempts.append(int(os.path.basename(path)))
        return validate_version(path)

    registry = ModelRegistry(str(root), loader=loader)
    registry.poll_once()
    assert registry.current().version == 1 and attempts == [3, 2, 1]
    _, versions = registry.status()
    states = {v.version: (v.state, v.reason) for v in versions}
    assert states[1][0] == SERVING
    assert states[2][0] == REJECTED and "variables.data" in states[2][1]
    assert states[3][0] == REJECTED and "not valid JSON" in states[3][1]

    attempts.clear()
    registry.poll_once()
    assert attempts == []  # unchanged bad folders are not retried

    meta = json.loads((root / "1" / "metadata.json").read_text())
    (root / "3" / "metadata.json").write_text(json.dumps(meta))  # repaired
    registry.poll_once()
    assert attempts == [3] and registry.current().version == 3


def test_registry_pinned_version_wins_over_newer(tmp_path):
    root = tmp_path / "models"
    for seed in range(3):
        publish(str(root), tiny_artifact(seed=seed), METADATA)
    registry = ModelRegistry(str(root), pinned_version=2)
    registry.poll_once()
    assert registry.current().version == 2


def test_registry_serves_a_version_with_an_index_through_the_index(tmp_path):
    from movierec_common import ann_index
    from recommender_service.top_k import FaissIVF

    art = tiny_artifact(users=40, items=200, seed=4)
    files, retrieval = ann_index.files_for_version(art.item_vectors, art.user_vectors, min_items=100)
    publish(str(tmp_path / "models"), art, dataclasses.replace(METADATA, retrieval=retrieval), files)
    registry = ModelRegistry(str(tmp_path / "models"))
    registry.poll_once()
    model = registry.current()
    assert model is not None and model.version == 1, registry.status()[1]
    assert isinstance(model.retriever.top_k, FaissIVF)
    assert model.serving["serving_ann"] == 1.0 and model.serving["serving_smoke_recall_at_10"] >= 0.8
    for user in range(art.num_users):
        items = model.retriever.recommend(art.user_ids[user], 10).items
        assert len({s.movie_id for s in items}) == 10
        assert not set(s.movie_id for s in items) & set(art.movie_ids[art.seen_items(user)].tolist())


def test_the_loader_hands_arrays_over_as_mapped_files_and_leaves_none_behind(tmp_path):
    import io
    import os

    from recommender_service.isolation import HandoffPickler, HandoffUnpickler

    root = tmp_path / "models"
    publish(str(root), tiny_artifact(users=300, items=500, seed=2), METADATA)
    validated = validate_version(str(root / "1"))
    folder = tmp_path / "handoff"
    folder.mkdir()
    buffer = io.BytesIO()
    pickler = HandoffPickler(buffer, str(folder))
    pickler.dump(validated)
    assert pickler.count >= 1 and len(buffer.getvalue()) < 100_000
    received = HandoffUnpickler(io.BytesIO(buffer.getvalue())).load()
    assert os.listdir(folder) == []
    np.testing.assert_array_equal(received.rankings.indices, validated.rankings.indices)
    assert received.catalogue.titles.tolist() == validated.catalogue.titles.tolist()
    assert not received.rankings.indices.flags.writeable  # served straight from the mapping


def test_the_smoke_test_holds_an_approximate_backend_to_the_exact_signature(tmp_path):
    from recommender_service.top_k import BruteForce
    from recommender_service.validation import smoke_test

    class Honest(BruteForce):
        exact = False

    class Worst(Honest):
        """k distinct unseen movies with their true scores: the worst ones."""

        def top_k(self, query, k, exclude=NO_ITEMS, subset=None):
            found, _ = super().top_k(-query, k, exclude)
            return found, self._items[found] @ query

    art = tiny_artifact(users=30, items=300, seed=6)
    publish(str(tmp_path / "models"), art, METADATA)
    loaded, module = artifact.load(str(tmp_path / "models" / "1"))
    assert smoke_test(Retriever(art, Honest(art.item_vectors)), loaded, module)["smoke_recall_at_10"] == 1.0
    with pytest.raises(artifact.ArtifactError, match="approximate index finds 0.00 of"):
        smoke_test(Retriever(art, Worst(art.item_vectors)), loaded, module)


@pytest.mark.parametrize("backend", ["exact", "faiss_ivf"])
def test_rankings_computed_at_load_and_the_live_path_give_the_same_answers_with_ties(backend):
    """Every (user, k) the precomputed rankings answer must get the live backend's answer, and k past
    their depth must extend it: on a catalogue larger than PRECOMPUTED_TOP whose integer vectors make
    exact ties everywhere, across the k-th place too, where the exact backend's rule (ties to the lower
    index) must hold. The index probes every cell here, so it owes the exact answer."""
    from movierec_common import ann_index
    from recommender_service.rankings import PRECOMPUTED_TOP
    from recommender_service.top_k import BruteForce, FaissIVF

    rng = np.random.default_rng(7)
    users, items, dim = 40, 3 * PRECOMPUTED_TOP, 4
    art = dataclasses.replace(tiny_artifact(users=users, items=items, dim=dim, seed=7),
                              user_vectors=rng.integers(-2, 3, size=(users, dim)).astype(np.float32),
                              item_vectors=rng.integers(-2, 3, size=(items, dim)).astype(np.float32))
    if backend == "exact":
        top_k = BruteForce(art.item_vectors)
    else:
        index, params = ann_index.build(art.item_vectors, nlist=4, nprobe=4)
        index = ann_index.deserialize(ann_index.serialize(index), params, items, dim)
        top_k = FaissIVF(index, np.linalg.norm(art.item_vectors, axis=1).astype(np.float32), params.max_first_fetch)
    retriever = Retriever(art, top_k)
    assert retriever.rankings.num_users == users and retriever.rankings.top == PRECOMPUTED_TOP

    ties_at_the_cut = 0
    for user in range(users):
        user_id = art.user_ids[user]
        scores = art.item_vectors @ art.user_vectors[user]
        seen = set(art.seen_items(user).tolist())
        brute = sorted((i for i in range(items) if i not in seen), key=lambda i: (-scores[i], i))
        ties_at_the_cut += scores[brute[PRECOMPUTED_TOP - 1]] == scores[brute[PRECOMPUTED_TOP]]
        for k in (1, 7, PRECOMPUTED_TOP - 1, PRECOMPUTED_TOP):
            precomputed = retriever.recommend(user_id, k).items
            assert precomputed == retriever.recommend_live(user, k).items, (user, k)
            assert [s.movie_id for s in precomputed] == art.movie_ids[brute[:k]].tolist(), (user, k)
        deeper = retriever.recommend(user_id, PRECOMPUTED_TOP + 50).items  # past the rankings: live
        assert [s.movie_id for s in deeper] == art.movie_ids[brute[:PRECOMPUTED_TOP + 50]].tolist()
        assert deeper[:PRECOMPUTED_TOP] == retriever.recommend(user_id, PRECOMPUTED_TOP).items
    assert ties_at_the_cut >= users // 2  # the data does what it is for
