"""Two trainer processes on one model root (a rolling deploy), on a local folder and on a real S3 API
(moto on loopback): the second refuses, naming the first, or waits and takes over when the first stops."""

from __future__ import annotations

import subprocess
import sys

import pytest

from movierec_common import model_root
from tests.servers import start_trainer

pytestmark = pytest.mark.slow


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "models")
        return
    from tests.s3 import s3_server

    with s3_server("rolling"):
        yield "s3://rolling/root"


def _trainer_command(root: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainer_service.server", "--port", "0", "--model-root", root, *extra]


def test_a_second_trainer_on_one_root_refuses_or_waits_for_the_first(root, tmp_path):
    first = start_trainer(root, tmp_path)
    second = None
    try:
        # An upload in progress of the first trainer's: the second must not remove it.
        in_progress = model_root.join(root, ".tmp-9-inflight" if model_root.is_local(root) else "9",
                                      "saved_model.pb")
        model_root.write_bytes(in_progress, b"being written")

        refused = subprocess.run(_trainer_command(root, "--lease-wait", "0"), capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode != 0
        assert f"is held by trainer pid {first.process.pid} on host" in refused.stderr, refused.stderr[-2000:]
        assert model_root.exists(in_progress)

        second = subprocess.Popen(_trainer_command(root, "--lease-wait", "60"), stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        first.terminate(timeout=30)  # releases the lease on the way out
        assert "listening on" in second.stdout.readline()
    finally:
        if second is not None:
            second.terminate()
            second.wait(30)
        first.terminate(timeout=30)
