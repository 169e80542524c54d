"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from clients import RecommenderClient, TrainerClient
from tests.unit.fakes import Replica, Servers


@pytest.fixture
def cli(capsys):
    """``cli(*args)`` -> (exit code, stdout, stderr) of the ``movierec`` command line, run in this process."""
    from clients.cli import main

    def invoke(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture
def offline_without_tfds_cache(tmp_path, monkeypatch):
    """A machine where tensorflow-datasets has nothing cached and the GroupLens host cannot be reached.

    The TFDS fallback's tests must not depend on the machine they run on: a
    developer's TFDS cache, or a CI runner with internet, would otherwise let
    them pass without ever reaching the code they test. TFDS reads its data
    folder from ``constants.DATA_DIR`` at each look-up; the host probe goes to
    a closed local port.
    """
    monkeypatch.delenv("MOVIELENS_DIR", raising=False)
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    from movierec_common.tfenv import tensorflow

    tensorflow()
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import constants

    from trainer_service import data as data_module

    monkeypatch.setattr(constants, "DATA_DIR", str(tmp_path / "tensorflow_datasets"))
    monkeypatch.setattr(data_module, "GROUPLENS_HOST", ("127.0.0.1", 1))
    return tfds


# -- the scripted services of tests/unit/fakes.py (test_client.py, test_cli.py)


@pytest.fixture(scope="module")
def servers():
    started = Servers()
    yield started
    started.server.stop(0)


@pytest.fixture
def fresh(servers, monkeypatch):
    """Every test starts from default behaviour and without credentials in the environment
    (test_client.py and test_cli.py use it for every test: ``pytestmark``)."""
    servers.reset()
    monkeypatch.delenv("MOVIEREC_TOKEN", raising=False)
    monkeypatch.delenv("MOVIEREC_TOKEN_FILE", raising=False)
    yield


@pytest.fixture
def rc(servers):
    with RecommenderClient(servers.address, timeout=5) as client:
        yield client


@pytest.fixture
def tc(servers):
    with TrainerClient(servers.address, timeout=5) as client:
        client.poll_interval = 0.02
        yield client


@pytest.fixture
def replicas():
    started = [Replica() for _ in range(3)]
    yield started
    for replica in started:
        replica.stop()
