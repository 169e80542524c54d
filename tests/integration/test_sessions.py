"""Sessions through the real recommender process, the Python client and the CLI.

Two versions are published the way the trainer does (``write_version`` into a
temp folder, then one rename): version 1 without a ``query_encoder`` (as
every version published before sessions), version 2 with a two-part encoder
(a history part and a pooled part, the shape of ``ease_blend``, with decay, a
floor, centring and a visitor rule of its own). Expected answers are ranked by
hand from the same artifact with ``tests.session_reference``, the documented
rules written independently of ``QueryEncoder``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clients import FailedPrecondition, InvalidArgument, RecommenderClient
from clients.cli import main as cli
from movierec_common.artifact import ModelArtifact, VersionMetadata, write_version
from movierec_common.model_root import TMP_PREFIX
from movierec_common.session_query import HISTORY, METADATA_KEY, POOLED, Part, QueryEncoder
from tests.artifacts import tiny_artifact
from tests.servers import start_recommender
from tests.session_reference import known_user_query, visitor_query
from tests.unit.test_sessions import ranked, timed
from tests.waiting import wait_for_version

ITEMS, DIM = 60, 8


def blended() -> tuple[ModelArtifact, QueryEncoder]:
    """Item-item weights next to item embeddings; a user is half their history row, half their embedding."""
    base = timed(tiny_artifact(users=30, items=ITEMS, dim=DIM, seed=3), seed=3)
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(ITEMS, ITEMS)).astype(np.float32)
    np.fill_diagonal(weights, 0.0)
    history = np.zeros((base.num_users, ITEMS), dtype=np.float32)
    for user in range(base.num_users):
        history[user, base.seen_items(user)] = 1.0
    art = dataclasses.replace(
        base,
        user_vectors=np.hstack([0.5 * history, 0.5 * base.user_vectors]).astype(np.float32),
        item_vectors=np.hstack([weights.T, base.item_vectors]).astype(np.float32),
    )
    center = tuple(float(c) for c in base.item_vectors.mean(axis=0))
    return art, QueryEncoder(
        (Part(HISTORY, ITEMS, scale=0.5), Part(POOLED, DIM, scale=1.5, decay=3.0, floor=0.2, center=center)),
        visitor_parts=(Part(HISTORY, ITEMS, scale=0.7, decay=2.0, floor=0.1),
                       Part(POOLED, DIM, scale=2.0, decay=1.0, center=center)))


def publish(root, version: int, art: ModelArtifact, metadata: dict) -> None:
    staging = root / f"{TMP_PREFIX}{version}-test"
    write_version(str(staging), art, VersionMetadata(model_kind="test", query_encoder=metadata.get(METADATA_KEY)))
    staging.rename(root / str(version))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("sessions")
    root = base / "models"
    root.mkdir()
    art, encoder = blended()
    publish(root, 1, art, {})
    server = start_recommender(root, base)
    try:
        with RecommenderClient(server.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
            wait_for_version(rc, 1)
            yield {"rc": rc, "root": root, "art": art, "encoder": encoder, "address": server.address}
    finally:
        server.terminate()


def test_sessions_over_grpc(served, capsys):
    rc, root, art, encoder = served["rc"], served["root"], served["art"], served["encoder"]
    ids = art.movie_ids

    # Version 1 predates sessions: everything else answers, sessions are a precondition failure.
    assert len(rc.recommend(art.user_ids[0], k=5).items) == 5
    with pytest.raises(FailedPrecondition, match="model version 1 was published before sessions were supported; "
                                                 "retrain to answer recent_movie_ids"):
        rc.recommend(art.user_ids[0], k=5, recent=[int(ids[0])])

    publish(root, 2, art, {METADATA_KEY: encoder.to_json()})
    wait_for_version(rc, 2)

    # A known user: the recent movies are the newest part of their history, and are left out.
    user, recent = 4, np.array([11, 40, 2])
    history = art.seen_indices[art.seen_indptr[user]:art.seen_indptr[user + 1]]
    query = known_user_query(encoder.to_json(), art.user_vectors[user], history, recent, art.item_vectors)
    expected = ranked(art.item_vectors @ query, set(history.tolist()) | set(recent.tolist()), 10)
    recs = rc.recommend(art.user_ids[user], k=10, recent=ids[recent].tolist())
    assert [item.movie_id for item in recs] == ids[expected].tolist()
    assert (recs.model_version, recs.cold_start, recs.unknown_movie_ids) == (2, False, [])
    np.testing.assert_allclose([item.score for item in recs], (art.item_vectors @ query)[expected], rtol=1e-4)

    # An unknown user: the recent movies are the whole history; the answer is personal. Unknown ids come back.
    query = visitor_query(encoder.to_json(), recent, art.item_vectors)
    visitor = rc.recommend("someone new", k=10, recent=[99999, *ids[recent].tolist(), 99999, -5])
    assert [item.movie_id for item in visitor] == ids[ranked(art.item_vectors @ query, recent, 10)].tolist()
    assert not visitor.cold_start and visitor.unknown_movie_ids == [99999, -5]
    np.testing.assert_allclose([item.score for item in visitor],
                               (art.item_vectors @ query)[ranked(art.item_vectors @ query, recent, 10)], rtol=1e-4)
    popular = rc.recommend("someone new", k=10, recent=[99999])
    assert popular.cold_start and popular.unknown_movie_ids == [99999]
    assert popular.items == rc.recommend("someone new", k=10).items

    # Over the limit: a message that says the limit and the count.
    with pytest.raises(InvalidArgument, match="recent_movie_ids holds 1001 movies; at most 1000"):
        rc.recommend("someone new", k=10, recent=[int(ids[0])] * 1001)
    assert not rc.recommend("someone new", k=10, recent=[int(ids[0])] * 1000).cold_start

    # The CLI, once.
    code = cli(["--recommender", served["address"], "recommend", "someone new", "-k", "3",
                "--recent", ",".join(str(m) for m in [*ids[recent].tolist(), 99999])])
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = [int(line.split()[1]) for line in out.splitlines()[1:4]]
    assert printed == [item.movie_id for item in visitor.items[:3]]
    assert out.splitlines()[-1].startswith("model version 2, cold start: no, recommendation 2-")  # the answer's id
    assert "does not know recent movie(s) 99999" in err


def test_hostile_sessions_get_only_answers_or_invalid_argument(served):
    """Extremes, duplicates, unknown ids and lengths around the limit: an answer or INVALID_ARGUMENT, never more."""
    rc, art = served["rc"], served["art"]
    if not (served["root"] / "2").exists():
        publish(served["root"], 2, art, {METADATA_KEY: served["encoder"].to_json()})
    wait_for_version(rc, 2)
    rng = np.random.default_rng(11)
    known = art.movie_ids.tolist()
    hostile = [-(2**63), 2**63 - 1, 0, -1, 1, max(known) + 1, min(known) - 1]
    for case in range(150):
        size = int(rng.choice([1, 2, 10, 999, 1000, 1001, 1500])) if case % 10 == 0 else int(rng.integers(1, 30))
        pool = known if case % 3 else known + hostile
        recent = [int(m) for m in rng.choice(pool, size=size)]
        user = str(rng.choice([*art.user_ids[:3].tolist(), "someone new", "0"]))
        k = int(rng.choice([1, 10, ITEMS, 1000]))
        exclude = bool(case % 2)
        if size > 1000:
            with pytest.raises(InvalidArgument):
                rc.recommend(user, k=k, recent=recent, exclude_seen=exclude)
            continue
        recs = rc.recommend(user, k=k, recent=recent, exclude_seen=exclude)
        answered = [item.movie_id for item in recs]
        assert len(answered) == len(set(answered)) and set(answered) <= set(known)
        assert all(np.isfinite(item.score) for item in recs)
        assert recs.unknown_movie_ids == list(dict.fromkeys(m for m in recent if m not in set(known)))
        sent_known = set(recent) & set(known)
        if exclude and sent_known:
            assert not set(answered) & sent_known
        assert recs.cold_start == (user not in art.user_ids.tolist() and not sent_known)
