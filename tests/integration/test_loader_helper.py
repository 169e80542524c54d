"""Where a real recommender's loader helper runs: every thread at the lowest priority, on the last core
only (unless ``--loader-cpus 0``), after it has loaded a version, so TensorFlow's and faiss's own threads
count too. Why it matters: recommender_service.isolation and launch.confine_to_last_cpus."""

from __future__ import annotations

import os

import psutil
import pytest

from clients import RecommenderClient
from movierec_common.artifact import VersionMetadata
from tests.artifacts import tiny_artifact
from tests.servers import start_recommender
from trainer_service.publisher import publish

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="per-thread affinity is Linux's")


def _loader_helper(server_pid: int) -> psutil.Process:
    helpers = [p for p in psutil.Process(server_pid).children() if "spawn_main" in " ".join(p.cmdline())]
    assert len(helpers) == 1, [p.cmdline() for p in psutil.Process(server_pid).children()]
    return helpers[0]


@pytest.mark.parametrize("flag", [(), ("--loader-cpus", "0")], ids=["default", "any-core"])
def test_the_loader_helper_runs_every_thread_idle_and_by_default_on_the_last_core_only(tmp_path, flag):
    allowed = sorted(os.sched_getaffinity(0))
    if os.environ.get("CI") == "true":
        assert len(allowed) > 1, "CI's machine has two cores: this test must see a core left free"
    root = tmp_path / "models"
    publish(str(root), tiny_artifact(), VersionMetadata(model_kind="placement"))
    recommender = start_recommender(root, tmp_path, *flag)
    try:
        with RecommenderClient(recommender.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)  # the helper has loaded and smoke-tested a version
            assert rc.recommend("1", k=3).model_version == 1
        helper = _loader_helper(recommender.process.pid)
        threads = [t.id for t in helper.threads()]
        assert len(threads) > 3, threads  # TensorFlow's pools have started: they must follow the rule too
        expected = allowed[-1:] if not flag and len(allowed) > 1 else allowed
        for tid in threads:
            assert sorted(os.sched_getaffinity(tid)) == expected, (tid, os.sched_getaffinity(tid), expected)
            assert os.sched_getscheduler(tid) == os.SCHED_IDLE, tid
            assert os.getpriority(os.PRIO_PROCESS, tid) == 19, tid
        # The server itself keeps every core: it is only its helper that is kept off the others.
        assert sorted(os.sched_getaffinity(recommender.process.pid)) == allowed
    finally:
        recommender.terminate()


def test_a_negative_loader_core_count_is_refused_with_what_to_pass_instead(capsys):
    from recommender_service.server import parse_args

    assert parse_args(["--model-root", "m"]).loader_cpus is None  # the loader's own default: one core
    assert parse_args(["--model-root", "m", "--loader-cpus", "0"]).loader_cpus == 0
    with pytest.raises(SystemExit):
        parse_args(["--model-root", "m", "--loader-cpus", "-1"])
    assert "--loader-cpus must not be negative (0 = any core)" in capsys.readouterr().err
