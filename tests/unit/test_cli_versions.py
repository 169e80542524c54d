"""``movierec versions``, ``pin``, ``unpin``, ``hide``, ``unhide``, ``hidden`` and the pin lines of
``status``, against an in-process gRPC server answering from fixed protos.

What is under test is presentation and exit codes on top of the real client
(tables, sizes, a pin naming a deleted version, JSON, an older trainer), so
the server side is scripted; the real trainer and recommenders are exercised
in tests/integration/test_pin_versions.py and test_hidden_movies.py.
"""

from __future__ import annotations

import datetime as dt
import json
from concurrent import futures

import grpc
import pytest
from google.protobuf import timestamp_pb2

from clients.cli import main
from movierec.v1 import recommender_pb2, recommender_pb2_grpc, trainer_pb2, trainer_pb2_grpc

CREATED = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


def _stamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class Trainer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self):
        self.pins: list[int] = []
        self.pinned = 0
        self.hidden: set[int] = set()
        self.sequence = 0
        self.hide_calls: list[tuple[str, list[int], dict[str, str]]] = []
        self.refusal = ""  # HideMovies/UnhideMovies answer INVALID_ARGUMENT with this when set
        self.listing = [
            trainer_pb2.VersionInfo(version=12, model_kind="ease", metrics={"recall_at_10": 0.3125},
                                    created_at=_stamp(CREATED), size_bytes=3 * 1024 * 1024 + 512 * 1024,
                                    served_by=["web-1-100", "web-2-200"]),
            trainer_pb2.VersionInfo(version=11, model_kind="two_tower", size_bytes=900, pinned=True),
        ]

    def ListVersions(self, request, context):
        return trainer_pb2.ListVersionsResponse(versions=self.listing, pinned_version=self.pinned)

    def PinVersion(self, request, context):
        self.pins.append(request.version)
        previous, self.pinned = self.pinned, request.version
        return trainer_pb2.PinVersionResponse(pinned_version=request.version, previous_pinned_version=previous)

    def HideMovies(self, request, context):
        return self._change("HideMovies", request, context, self.hidden.union)

    def UnhideMovies(self, request, context):
        return self._change("UnhideMovies", request, context, self.hidden.difference)

    def ListHiddenMovies(self, request, context):
        self.hide_calls.append(("ListHiddenMovies", [], dict(context.invocation_metadata())))
        return self._listing()

    def _change(self, method, request, context, operation):
        self.hide_calls.append((method, list(request.movie_ids), dict(context.invocation_metadata())))
        if self.refusal:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.refusal)
        self.hidden = operation(request.movie_ids)
        self.sequence += 1
        return self._listing()

    def _listing(self):
        return trainer_pb2.HiddenMovies(movie_ids=sorted(self.hidden), sequence=self.sequence)


class Recommender(recommender_pb2_grpc.RecommenderServicer):
    def GetModelStatus(self, request, context):
        return recommender_pb2.ModelStatus(
            served_version=12, model_kind="ease", pinned_version=11,
            pin_source=recommender_pb2.ModelStatus.MODEL_ROOT,
            pin_problem="pinned version 11 was rejected (NaN scores); version 12 keeps serving")


@pytest.fixture(scope="module")
def fakes():
    trainer, recommender = Trainer(), Recommender()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trainer_pb2_grpc.add_TrainerServicer_to_server(trainer, server)
    recommender_pb2_grpc.add_RecommenderServicer_to_server(recommender, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", trainer
    server.stop(0)


@pytest.fixture
def run(fakes, cli, monkeypatch):
    address, trainer = fakes
    trainer.pins.clear()
    trainer.pinned = 11
    trainer.hidden, trainer.sequence = set(), 0
    trainer.hide_calls.clear()
    trainer.refusal = ""
    monkeypatch.setenv("MOVIEREC_TRAINER", address)
    monkeypatch.setenv("MOVIEREC_RECOMMENDER", address)
    monkeypatch.delenv("MOVIEREC_TOKEN", raising=False)
    return cli


def test_versions_prints_a_table_with_sizes_pin_and_replicas(run):
    code, out, err = run("versions")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["version", "kind", "recall@10", "created", "size", "pinned", "served", "by"]
    first, second = lines[1].split(), lines[2].split()
    assert first[:3] == ["12", "ease", "0.3125"]
    assert first[5:] == ["3.5", "MB", "web-1-100,", "web-2-200"]
    assert second[:3] == ["11", "two_tower", "-"] and second[3:] == ["-", "900", "B", "yes", "-"]
    assert lines[-1] == "pinned: 11 (`movierec unpin` to follow the newest valid version)"


def test_versions_warns_when_the_pin_names_a_version_no_longer_there(run, fakes):
    fakes[1].pinned = 7
    code, out, err = run("versions")
    assert code == 0
    assert "pinned: 7, which is no longer in the model root: recommenders keep what they serve" in err


def test_versions_json(run):
    code, out, _ = run("--json", "versions")
    data = json.loads(out)
    assert code == 0 and data["pinned_version"] == 11
    assert data["versions"][0] == {
        "version": 12, "model_kind": "ease", "metrics": {"recall_at_10": 0.3125},
        "created_at": CREATED.isoformat(), "size_bytes": 3_670_016, "pinned": False,
        "served_by": ["web-1-100", "web-2-200"]}
    assert data["versions"][1]["created_at"] is None  # unset on the wire, not 1970


def test_pin_and_unpin_send_the_version_and_say_what_changed(run, fakes):
    code, out, err = run("pin", "12")
    assert code == 0, err
    assert out.startswith("pinned version 12 (before: 11); every recommender serves it after its next poll")
    code, out, err = run("unpin")
    assert code == 0, err
    assert out.startswith("unpinned (before: 12); recommenders follow the newest valid version again")
    code, out, _ = run("--json", "unpin")
    assert json.loads(out) == {"pinned_version": None, "previous_pinned_version": None}
    assert fakes[1].pins == [12, 0, 0]


@pytest.mark.parametrize("bad", ["0", "-3", "x"])
def test_pin_needs_a_positive_version(run, fakes, bad):
    code, _, err = run("pin", bad)
    assert code == 2
    assert "must be a positive integer" in err if bad != "x" else "invalid _positive_int value: 'x'" in err
    assert fakes[1].pins == []


def test_status_says_where_the_pin_comes_from_and_why_it_is_not_served(run):
    code, out, err = run("status")
    assert code == 0, err
    assert "pinned version: 11 (the model root's pin, for every replica)" in out
    assert "pin problem:    pinned version 11 was rejected (NaN scores); version 12 keeps serving" in out


@pytest.mark.parametrize(("command", "method"), [(["versions"], "ListVersions"), (["hidden"], "ListHiddenMovies"),
                                                 (["hide", "1"], "HideMovies")])
def test_an_older_trainer_without_the_calls_is_one_line_not_a_traceback(capsys, command, method):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trainer_pb2_grpc.add_TrainerServicer_to_server(trainer_pb2_grpc.TrainerServicer(), server)  # nothing implemented
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        code = main(["--trainer", f"127.0.0.1:{port}", *command])
    finally:
        server.stop(0)
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {method} at ") and err.rstrip().endswith("(UNIMPLEMENTED)")


# --------------------------------------------------------------------------- hidden movies


def test_hide_sends_the_ids_and_says_when_replicas_follow(run, fakes):
    code, out, err = run("hide", "123", "456,789")
    assert code == 0, err
    assert out.startswith("hid 123, 456, 789: 3 movies hidden now (sequence 1); every recommender applies it "
                          "after its next poll")
    assert [(method, ids) for method, ids, _ in fakes[1].hide_calls] == [("HideMovies", [123, 456, 789])]


def test_unhide_and_hidden_list_what_the_root_holds(run, fakes):
    assert run("hide", *map(str, range(1, 26)))[0] == 0
    code, out, err = run("unhide", "25", "99")
    assert code == 0, err
    assert out.startswith("unhid 25, 99: 24 movies hidden now (sequence 2);")
    code, out, err = run("hidden")
    assert code == 0, err
    assert out.splitlines() == ["24 movies hidden (sequence 2):", "1 2 3 4 5 6 7 8 9 10",
                                "11 12 13 14 15 16 17 18 19 20", "21 22 23 24"]
    assert [(method, ids) for method, ids, _ in fakes[1].hide_calls][1:] == [("UnhideMovies", [25, 99]),
                                                                            ("ListHiddenMovies", [])]


def test_hidden_when_nothing_is_hidden(run):
    code, out, _ = run("hidden")
    assert code == 0 and out.strip() == "no hidden movies (sequence 0)"


def test_hidden_movies_json(run):
    code, out, _ = run("--json", "hide", "7", "3")
    assert code == 0 and json.loads(out) == {"movie_ids": [3, 7], "sequence": 1}
    code, out, _ = run("hidden", "--json")
    assert code == 0 and json.loads(out) == {"movie_ids": [3, 7], "sequence": 1}


def test_hide_takes_the_token_as_pin_does(run, fakes, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("operator-token\n")
    assert run("--token-file", str(token_file), "hide", "5")[0] == 0
    monkeypatch.setenv("MOVIEREC_TOKEN", "env-token")
    assert run("unhide", "5")[0] == 0
    code, _, err = run("hide", "5", "--token", "s3cret-on-the-command-line")
    assert code == 2 and "--token is not accepted" in err and "s3cret" not in err
    assert [md.get("authorization") for _, _, md in fakes[1].hide_calls] == ["Bearer operator-token",
                                                                            "Bearer env-token"]


@pytest.mark.parametrize(("args", "message"), [
    (["hide"], "the following arguments are required: ID"),
    (["unhide"], "the following arguments are required: ID"),
    (["hide", "12", "x"], "argument ID: must be movie ids, e.g. 123 456 or 123,456; got 'x'"),
    (["hide", "1,,2"], "must be movie ids"),
])
def test_hide_needs_movie_ids(run, fakes, args, message):
    code, out, err = run(*args)
    assert code == 2 and out == "" and message in err
    assert fakes[1].hide_calls == []


def test_a_refused_hide_is_one_line(run, fakes):
    fakes[1].refusal = "HideMovies takes at most 10,000 ids a call; got 10,001"
    code, out, err = run("hide", "1")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.rstrip().endswith("got 10,001 (INVALID_ARGUMENT)")
