"""A version with an approximate index, served by a real recommender process.

20,000 clustered movies published through ``publish()`` with a faiss index
(forced by a low threshold): answers over gRPC are compared with the
SavedModel's own exact ``serving_default`` signature, and versions whose
index file is corrupt, missing or built from other vectors are rejected while
the good version keeps serving.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from clients import RecommenderClient
from movierec_common import ann_index, artifact
from movierec_common.artifact import VersionMetadata
from movierec_common.tfenv import tensorflow
from tests.artifacts import clustered_artifact
from tests.servers import rejection_reason, start_recommender
from trainer_service.publisher import publish

K = 10
# Deep enough that the best movies spread over more cells than the index probes (measured: about 45% of
# these users' answers at 1,000 pass over a better movie; none at 10, 1 in 200 at 100).
DEEP = 1000
USERS_CHECKED = 150


@pytest.fixture(scope="module")
def ann_stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("ann")
    root = base / "models"
    art = clustered_artifact(users=400, items=20_000, seed=11)
    files, retrieval = ann_index.files_for_version(art.item_vectors, art.user_vectors, min_items=1_000)
    assert retrieval["backend"] == "faiss"
    version = publish(str(root), art, VersionMetadata(model_kind="synthetic", retrieval=retrieval), files)
    recommender = start_recommender(root, base)
    try:
        with RecommenderClient(recommender.address, timeout=30) as rc:
            rc.wait_until_serving(timeout=120)
        yield {"root": root, "base": base, "artifact": art, "version": version, "recommender": recommender,
               "retrieval": retrieval}
    finally:
        recommender.terminate()


def _exact_top_k(path, user_ids: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the version's own exact signature, loaded here, not in the server."""
    tf = tensorflow()
    signature = tf.saved_model.load(str(path)).signatures[artifact.SERVING_SIGNATURE]
    out = signature(user_id=tf.constant(user_ids), k=tf.constant(k, tf.int32))
    return out["movie_ids"].numpy(), out["scores"].numpy()


def test_served_answers_recall_the_exact_signature_and_exclude_seen(ann_stack):
    art, root = ann_stack["artifact"], ann_stack["root"]
    users = list(range(0, art.num_users, art.num_users // USERS_CHECKED))[:USERS_CHECKED]
    user_ids = [str(art.user_ids[u]) for u in users]
    exact_ids, _ = _exact_top_k(root / str(ann_stack["version"]), user_ids, K)
    position = {int(m): i for i, m in enumerate(art.movie_ids)}
    recalls, passed_over = [], 0
    with RecommenderClient(ann_stack["recommender"].address, timeout=10) as rc:
        for row, (user, user_id) in enumerate(zip(users, user_ids, strict=True)):
            recs = rc.recommend(user_id, k=K)
            ids = [item.movie_id for item in recs.items]
            assert recs.model_version == ann_stack["version"] and not recs.cold_start
            assert len(ids) == K and len(set(ids)) == K
            indices = np.array([position[m] for m in ids])
            assert not np.isin(indices, art.seen_items(user)).any(), f"user {user_id} got a seen movie"
            np.testing.assert_allclose([item.score for item in recs.items],
                                       art.item_vectors[indices] @ art.user_vectors[user], rtol=1e-4, atol=1e-5)
            recalls.append(len(set(ids) & set(exact_ids[row].tolist())) / K)
            # Deeper, where an IVF index that probes a few clusters misses some of the exact best.
            deep_scores = [item.score for item in rc.recommend(user_id, k=DEEP).items]
            passed_over += _passes_over_a_better_movie(art, user, deep_scores)
        # Past the precomputed depth the live index path answers, with the same guarantees.
        deep = rc.recommend(user_ids[0], k=150)
        deep_ids = [item.movie_id for item in deep.items]
        assert len(deep_ids) == 150 == len(set(deep_ids))
        assert not np.isin([position[m] for m in deep_ids], art.seen_items(users[0])).any()
        similar = rc.similar_items(int(art.movie_ids[0]), k=5)
        assert len(similar.items) == 5 and int(art.movie_ids[0]) not in [i.movie_id for i in similar.items]
    recall = float(np.mean(recalls))
    print(f"\nserved recall@{K} vs the exact signature over {len(users)} users: {recall:.3f}; "
          f"{passed_over} answers passed over a better unseen movie")
    assert recall >= 0.95
    # The IVF index answers, not an exact scan: an exact server never passes over a better unseen movie.
    assert passed_over > 0, "every answer is exact: the faiss index did not answer"


def _passes_over_a_better_movie(art, user: int, served_scores: list[float]) -> bool:
    """Whether an unseen movie outside the answer scores clearly above the answer's last one (numpy, exact)."""
    scores = art.item_vectors.astype(np.float64) @ art.user_vectors[user].astype(np.float64)
    scores[art.seen_items(user)] = -np.inf
    best = np.sort(scores)[::-1][:len(served_scores)]
    return bool(best[-1] > min(served_scores) + 1e-3 * max(1.0, abs(best[-1])))


def test_status_and_metadata_show_the_ann_backend(ann_stack):
    metadata = artifact.read_metadata(str(ann_stack["root"] / str(ann_stack["version"])))
    assert metadata.retrieval["backend"] == "faiss" and ann_index.INDEX_FILE in metadata.files
    with RecommenderClient(ann_stack["recommender"].address, timeout=10) as rc:
        status = rc.model_status()
    assert status.served_version == ann_stack["version"]
    assert status.num_items == 20_000
    assert status.metrics["serving_ann"] == 1.0
    assert status.metrics["serving_ann_nprobe"] == ann_stack["retrieval"]["nprobe"]
    assert status.metrics["serving_ann_nlist"] == ann_stack["retrieval"]["nlist"]
    assert status.metrics["serving_smoke_recall_at_10"] >= 0.8


def _copy(root, good: int, version: int):
    tmp = root / f".tmp-{version}-test"
    shutil.copytree(root / str(good), tmp)
    return tmp




def _rewrite_manifest(folder) -> None:
    """What a buggy trainer would write: a manifest that matches the bad files."""
    metadata = artifact.VersionMetadata.from_text((folder / artifact.METADATA_FILE).read_bytes())
    metadata = dataclasses.replace(metadata, files=artifact.file_manifest(str(folder)))
    (folder / artifact.METADATA_FILE).write_text(metadata.to_text())


def test_bad_index_files_are_rejected_while_the_good_version_keeps_serving(ann_stack):
    root, good, art = ann_stack["root"], ann_stack["version"], ann_stack["artifact"]

    def corrupt(folder):
        path = folder / ann_index.INDEX_FILE
        data = bytearray(path.read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
        path.write_bytes(bytes(data))

    def missing(folder):
        (folder / ann_index.INDEX_FILE).unlink()

    def truncated(folder):
        path = folder / ann_index.INDEX_FILE
        path.write_bytes(path.read_bytes()[:-4096])

    def unlisted(folder):
        missing(folder)
        _rewrite_manifest(folder)

    def other_vectors(folder):
        rng = np.random.default_rng(5)
        shuffled = art.item_vectors[rng.permutation(art.num_items)]
        index, _ = ann_index.build(shuffled, nlist=ann_stack["retrieval"]["nlist"], nprobe=8)
        (folder / ann_index.INDEX_FILE).write_bytes(ann_index.serialize(index))
        _rewrite_manifest(folder)

    cases = [
        (corrupt, "ann.faiss does not match its checksum"),
        (missing, "ann.faiss is missing"),
        (truncated, "ann.faiss is"),
        (unlisted, "manifest does not list ann.faiss"),
        (other_vectors, "holds other vectors than the SavedModel"),
    ]
    with RecommenderClient(ann_stack["recommender"].address, timeout=10) as rc:
        for offset, (damage, fragment) in enumerate(cases, start=1):
            version = good + offset
            tmp = _copy(root, good, version)
            damage(tmp)
            tmp.rename(root / str(version))
            reason = rejection_reason(rc, version)
            assert fragment in reason, reason
            assert rc.recommend("1", k=K).model_version == good
        status = rc.model_status()
        assert status.served_version == good
        assert {v.version: v.state for v in status.versions}[good] == "SERVING"
    for offset in range(1, len(cases) + 1):
        shutil.rmtree(root / str(good + offset))


def test_the_trainer_ships_an_index_and_rankings_past_its_threshold(tmp_path):
    """``--ann-min-items`` reaches run_job: the published version carries the index and the users'
    rankings, and is served by them."""
    from clients import TrainerClient
    from tests.datagen import write_grouplens_files
    from tests.servers import start_trainer

    data_root = write_grouplens_files(tmp_path / "data", users=60, items=40)
    root = tmp_path / "models"
    trainer = start_trainer(root, tmp_path, "--data-root", str(data_root), "--ann-min-items", "30")
    recommender = start_recommender(root, tmp_path)
    try:
        with TrainerClient(trainer.address, timeout=30) as tc:
            job = tc.wait_for_job(tc.train("ease", ratings_path="ratings.data", items_path="items.item",
                                           holdout_size=2).id, timeout=300)
        assert job.state == "SUCCEEDED", job.error
        metadata = artifact.read_metadata(str(root / str(job.model_version)))
        assert metadata.retrieval["backend"] == "faiss" and ann_index.INDEX_FILE in metadata.files
        # Every user's ranking was computed by the trainer and ships beside the index.
        assert metadata.rankings is not None and metadata.rankings.users == 60
        assert metadata.rankings.file in metadata.files
        with RecommenderClient(recommender.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=120)
            served = rc.model_status().metrics
            assert served["serving_ann"] == 1.0
            assert served["serving_rankings_shipped"] == 1.0 and served["serving_ranked_users"] == 60
            recs = rc.recommend("1", k=5)
            assert len({item.movie_id for item in recs.items}) == 5
    finally:
        trainer.terminate()
        recommender.terminate()
