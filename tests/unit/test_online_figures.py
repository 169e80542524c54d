"""ListVersions' online figures (trainer_service.online_figures): summed over the replicas that reported them
to a real event store, and a listing that still answers, with 0 and the reason, when the store is off or down."""

from __future__ import annotations

import pytest

from movierec.v1 import trainer_pb2
from movierec_common.event_store import OnlineOutcome, open_store
from trainer_service import servicer
from trainer_service.config import TrainerConfig
from trainer_service.publisher import PublishedVersion, RootVersions


class _Context:
    def abort(self, code, details):
        raise AssertionError(f"ListVersions aborted: {code} {details}")

    def time_remaining(self):
        return None


@pytest.fixture
def two_versions(monkeypatch):
    listing = RootVersions(versions=[PublishedVersion(version=v, model_kind="ease", metrics={}, created_at=None,
                                                      size_bytes=10) for v in (2, 1)], pinned_version=None)
    monkeypatch.setattr(servicer, "root_versions", lambda root: listing)


def _list(events) -> trainer_pb2.ListVersionsResponse:
    service = servicer.TrainerServicer(manager=None, config=TrainerConfig(model_root="unused", events=events))
    return service.ListVersions(trainer_pb2.ListVersionsRequest(), _Context())


def test_online_outcomes_summed_over_replicas(two_versions, tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/events.sqlite")
    assert store is not None
    store.report_online("web-1", {1: OnlineOutcome(judged=8, hits=2), 2: OnlineOutcome(judged=10, hits=1)})
    store.report_online("web-2", {1: OnlineOutcome(judged=12, hits=3)})
    listed = _list(store)
    assert listed.online_problem == ""
    figures = {v.version: (v.online_judged, v.online_hits, round(v.online_hit_rate, 6)) for v in listed.versions}
    assert figures == {2: (10, 1, 0.1), 1: (20, 5, 0.25)}
    store.close()


def test_no_store_or_a_store_that_is_down_leaves_them_zero(two_versions, tmp_path):
    off = _list(None)
    assert "--events none" in off.online_problem
    assert [(v.version, v.online_judged, v.online_hit_rate) for v in off.versions] == [(2, 0, 0.0), (1, 0, 0.0)]
    store = open_store(f"sqlite:///{tmp_path}/events.sqlite")
    assert store is not None
    store.close()  # every later call raises StoreUnavailable
    down = _list(store)
    assert "could not be read" in down.online_problem and "events.sqlite" in down.online_problem
    assert [v.online_judged for v in down.versions] == [0, 0]
