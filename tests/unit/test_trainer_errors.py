"""The trainer's errors: one base, one status each, and the servicer answers with them (storage included)."""

from __future__ import annotations

import inspect

import grpc
import pytest

from movierec.v1 import trainer_pb2
from movierec_common.model_root import PinDamaged, RootAccessDenied, RootUnreachable
from trainer_service import errors, servicer
from trainer_service.config import TrainerConfig


def test_every_trainer_error_has_one_base_and_a_status():
    classes = [value for value in vars(errors).values()
               if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == errors.__name__]
    assert len(classes) > 10
    for cls in classes:
        assert issubclass(cls, errors.TrainerError), cls
        assert isinstance(cls.code, grpc.StatusCode), cls
    assert errors.InvalidRequest.code is grpc.StatusCode.INVALID_ARGUMENT
    assert issubclass(errors.DatasetPathError, errors.InvalidRequest)  # refused at Train as INVALID_ARGUMENT
    assert errors.QueueFull.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert errors.IdempotencyConflict.code is grpc.StatusCode.ALREADY_EXISTS
    assert errors.JobNotFound.code is errors.VersionNotFound.code is grpc.StatusCode.NOT_FOUND
    assert str(errors.JobNotFound("job-1")) == "no job with id 'job-1'; `movierec jobs` lists the known ones"


class Aborted(Exception):
    pass


class Context:
    """``remaining``: the time left, or a list of the answers to successive time_remaining() calls."""

    def __init__(self, remaining: float | list[float] | None = None):
        self.remaining = remaining

    def abort(self, code, details):
        raise Aborted(code, details)

    def time_remaining(self):
        if isinstance(self.remaining, list):
            return self.remaining.pop(0) if len(self.remaining) > 1 else self.remaining[0]
        return self.remaining


@pytest.mark.parametrize(("failure", "code", "message"), [
    (RootUnreachable("listing s3://m/ failed: EndpointConnectionError"), grpc.StatusCode.UNAVAILABLE,
     "the model root cannot be read: listing s3://m/ failed"),
    (RootAccessDenied("listing s3://m/: permission denied"), grpc.StatusCode.FAILED_PRECONDITION,
     "the trainer may not read the model root: listing"),
    (PinDamaged("s3://m/.pin.json does not name a version"), grpc.StatusCode.FAILED_PRECONDITION,
     "does not name a version; `movierec pin N` or `movierec unpin` replaces it"),
])
def test_list_versions_answers_a_storage_failure_with_its_status(monkeypatch, failure, code, message):
    def failing(root):
        raise failure

    monkeypatch.setattr(servicer, "root_versions", failing)
    service = servicer.TrainerServicer(manager=None, config=TrainerConfig(model_root="s3://m"))
    with pytest.raises(Aborted) as aborted:
        service.ListVersions(trainer_pb2.ListVersionsRequest(), Context())
    assert aborted.value.args[0] is code and message in aborted.value.args[1]


@pytest.mark.parametrize(("failure", "code", "message"), [
    (RootUnreachable("writing s3://m/.pin.json failed"), grpc.StatusCode.UNAVAILABLE,
     "the pin could not be written to the model root: writing"),
    (RootAccessDenied("writing s3://m/.pin.json: permission denied"), grpc.StatusCode.FAILED_PRECONDITION,
     "the trainer may not write the pin into the model root: writing"),
    (errors.VersionNotFound("version 9 is not a complete version"), grpc.StatusCode.NOT_FOUND,
     "version 9 is not a complete version"),
])
def test_pin_version_answers_each_failure_with_its_status(monkeypatch, failure, code, message):
    def failing(root, version, keys, before_write=None):
        raise failure

    monkeypatch.setattr(servicer, "pin_version", failing)
    service = servicer.TrainerServicer(manager=None, config=TrainerConfig(model_root="s3://m"))
    with pytest.raises(Aborted) as aborted:
        service.PinVersion(trainer_pb2.PinVersionRequest(version=9), Context())
    assert aborted.value.args[0] is code and aborted.value.args[1].startswith(message)


def test_a_change_whose_caller_has_stopped_waiting_is_not_made(tmp_path, monkeypatch):
    """PinVersion, HideMovies and UnhideMovies past their deadline change nothing and say so, so that a
    caller's retry after DEADLINE_EXCEEDED finds the state it left (the fuzz re-reads the state then)."""
    from trainer_service import servicer as servicer_module

    calls = []
    monkeypatch.setattr(servicer_module, "pin_version", lambda *args: calls.append(args))
    monkeypatch.setattr(servicer_module.hidden_movies, "hide", lambda *args: calls.append(args))
    monkeypatch.setattr(servicer_module.hidden_movies, "unhide", lambda *args: calls.append(args))
    servicer = servicer_module.TrainerServicer.__new__(servicer_module.TrainerServicer)
    servicer._config = type("Config", (), {"model_root": str(tmp_path), "publish_keys": None})()
    for call, request in ((servicer.PinVersion, trainer_pb2.PinVersionRequest(version=1)),
                          (servicer.HideMovies, trainer_pb2.HideMoviesRequest(movie_ids=[1])),
                          (servicer.UnhideMovies, trainer_pb2.UnhideMoviesRequest(movie_ids=[1]))):
        with pytest.raises(Aborted) as aborted:
            call(request, Context(remaining=-0.001))
        assert aborted.value.args[0] == grpc.StatusCode.DEADLINE_EXCEEDED and "nothing was changed" in \
            aborted.value.args[1]
    assert calls == []


def test_a_deadline_that_passes_before_the_write_changes_nothing(tmp_path):
    """The deadline is checked again under the writer's lock just before writing: a caller whose time ran
    out while the trainer read the current state finds that state unchanged (real pin and hidden files)."""
    from movierec_common import hidden_movies
    from movierec_common.artifact import VersionMetadata
    from movierec_common.model_root import read_pin
    from tests.artifacts import tiny_artifact
    from trainer_service.publisher import publish

    root = str(tmp_path / "models")
    version = publish(root, tiny_artifact(), VersionMetadata(model_kind="test"))
    service = servicer.TrainerServicer(manager=None, config=TrainerConfig(model_root=root))
    for call, request in ((service.PinVersion, trainer_pb2.PinVersionRequest(version=version)),
                          (service.HideMovies, trainer_pb2.HideMoviesRequest(movie_ids=[1]))):
        with pytest.raises(Aborted) as aborted:
            call(request, Context(remaining=[1.0, -0.001]))  # time on entry, none left at the write
        assert aborted.value.args[0] == grpc.StatusCode.DEADLINE_EXCEEDED, aborted.value.args
    assert read_pin(root) is None
    assert hidden_movies.read_rules(root).movie_ids.size == 0
    # With time left at both checks, the same calls do change the state (the test can fail).
    service.PinVersion(trainer_pb2.PinVersionRequest(version=version), Context(remaining=[1.0, 1.0]))
    service.HideMovies(trainer_pb2.HideMoviesRequest(movie_ids=[1]), Context(remaining=[1.0, 1.0]))
    assert read_pin(root) == version
    assert list(hidden_movies.read_rules(root).movie_ids) == [1]
