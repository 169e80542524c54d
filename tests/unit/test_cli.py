"""The ``movierec`` command line against the in-process fake services (fakes.py).

Why through ``main([...])`` and a real server: the CLI's job is presentation
and exit codes on top of the real client, so the tests assert on what an
operator sees (tables, unicode titles, one-line errors) and what was sent.
"""

from __future__ import annotations

import json

import grpc
import pytest

from clients import render
from movierec.v1 import recommender_pb2
from tests.unit.fakes import T0, Replica, abort, finished_job, make_job, rec_items

pytestmark = pytest.mark.usefixtures("fresh")


@pytest.fixture
def run(servers, cli, monkeypatch):
    """``run(*args)`` -> (exit code, stdout, stderr), both services at the fake server."""
    monkeypatch.setenv("MOVIEREC_TRAINER", servers.address)
    monkeypatch.setenv("MOVIEREC_RECOMMENDER", servers.address)
    return cli


# --------------------------------------------------------------------------- recommender


def test_recommend_prints_a_numbered_table(run, servers):
    code, out, err = run("recommend", "42", "-k", "3")

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["#", "movie", "title", "year", "genres", "score"]
    assert lines[1].split() == ["1", "50", "Star", "Wars", "(1977)", "1977", "Action,", "Sci-Fi", "0.7500"]
    assert "Misérables, Les (1995)" in lines[2] and lines[2].lstrip().startswith("2")
    assert lines[2].split()[-3:] == ["-", "-", "0.5000"]  # unknown year, no genres
    assert lines[-1] == "model version 7, cold start: no"
    (request,) = servers.recommender.requests("Recommend")
    assert request.user_id == "42" and request.k == 3 and not request.HasField("exclude_seen")


def test_recommend_include_seen_and_cold_start(run, servers):
    servers.recommender.handlers["Recommend"] = lambda r, c: recommender_pb2.RecommendResponse(
        items=[], model_version=2, cold_start=True
    )
    code, out, _ = run("recommend", "nobody", "--include-seen")

    assert code == 0
    assert out.splitlines()[-1] == "model version 2, cold start: yes"
    (request,) = servers.recommender.requests("Recommend")
    assert request.HasField("exclude_seen") and request.exclude_seen is False and request.k == 10


def test_recommend_with_recent_movies(run, servers):
    servers.recommender.handlers["Recommend"] = lambda r, c: recommender_pb2.RecommendResponse(
        items=rec_items(2), model_version=4, unknown_movie_ids=[99999, 5]
    )
    code, out, err = run("recommend", "nobody", "--recent", "50, 181,99999,5")

    assert code == 0, err
    (request,) = servers.recommender.requests("Recommend")
    assert list(request.recent_movie_ids) == [50, 181, 99999, 5]
    assert out.splitlines()[-1] == "model version 4, cold start: no"
    assert err.strip() == "note: model version 4 does not know recent movie(s) 99999, 5; ignored"
    code, out, _ = run("--json", "recommend", "nobody", "--recent", "50")
    assert code == 0 and json.loads(out)["unknown_movie_ids"] == [99999, 5]


@pytest.mark.parametrize("value", ["50,star-wars", "50,,181", "", "1.5"])
def test_recommend_bad_recent_is_a_usage_error(run, servers, value):
    code, out, err = run("recommend", "42", "--recent", value)

    assert code == 2 and out == ""
    assert "--recent: must be comma-separated movie ids, oldest first, e.g. 50,181,7" in err
    assert servers.recommender.requests("Recommend") == []


def test_recommend_json_keeps_unicode(run):
    code, out, _ = run("--json", "recommend", "42", "-k", "2")

    assert code == 0
    data = json.loads(out)
    assert data["model_version"] == 7 and data["cold_start"] is False
    assert data["items"][1] == {"movie_id": 1346, "title": "Misérables, Les (1995)", "score": 0.5, "genres": [],
                                "year": None}
    assert data["items"][0]["genres"] == ["Action", "Sci-Fi"] and data["items"][0]["year"] == 1977
    assert "Misérables" in out  # not \u-escaped


def test_global_options_may_follow_the_subcommand(run, servers, monkeypatch):
    monkeypatch.delenv("MOVIEREC_RECOMMENDER")
    code, out, _ = run("recommend", "7", "--recommender", servers.address, "--json", "--timeout", "3")
    assert code == 0 and json.loads(out)["model_version"] == 7


def test_similar(run, servers):
    code, out, _ = run("similar", "50", "-k", "2")

    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "movies similar to 50 Star Wars (1977) [-; -]:"  # the fake sends no facts for it
    assert "Misérables, Les (1995)" in lines[2] and "Return of the Jedi (1983)" in lines[3]
    assert lines[-1] == "model version 7"
    assert servers.recommender.requests("SimilarItems")[0].movie_id == 50


# --------------------------------------------------------------------------- filters


def test_no_filter_flag_sends_no_filter(run, servers):
    assert run("recommend", "42")[0] == 0 and run("similar", "50")[0] == 0
    assert not servers.recommender.requests("Recommend")[0].HasField("filter")
    assert not servers.recommender.requests("SimilarItems")[0].HasField("filter")


def test_recommend_filter_flags_make_one_filter(run, servers):
    code, _, err = run("recommend", "42", "--genre", "Comedy", "--genre", "Romance", "--exclude", "50,181",
                       "--exclude", "7", "--exclude-genre", "Horror", "--only", "1, 2,3", "--years", "1990-1999")
    assert code == 0, err
    (request,) = servers.recommender.requests("Recommend")
    sent = request.filter
    assert list(sent.genres_any) == ["Comedy", "Romance"] and list(sent.genres_all) == []
    assert list(sent.exclude_movie_ids) == [50, 181, 7] and list(sent.only_movie_ids) == [1, 2, 3]
    assert list(sent.exclude_genres) == ["Horror"] and (sent.min_year, sent.max_year) == (1990, 1999)


def test_all_genres_asks_for_every_genre(run, servers):
    assert run("recommend", "42", "--all-genres", "--genre", "Comedy", "--genre", "Romance")[0] == 0
    sent = servers.recommender.requests("Recommend")[0].filter
    assert list(sent.genres_all) == ["Comedy", "Romance"] and list(sent.genres_any) == []


def test_similar_takes_the_same_flags(run, servers):
    code, _, err = run("similar", "50", "--genre", "Sci-Fi", "--exclude", "181", "--years", "1980-")
    assert code == 0, err
    sent = servers.recommender.requests("SimilarItems")[0].filter
    assert list(sent.genres_any) == ["Sci-Fi"] and list(sent.exclude_movie_ids) == [181]
    assert (sent.min_year, sent.max_year) == (1980, 0)


@pytest.mark.parametrize(("years", "bounds"), [
    (["--years", "1990-1999"], (1990, 1999)),
    (["--years", " 1990 - 1999 "], (1990, 1999)),
    (["--years", "1990-"], (1990, 0)),
    (["--years", "-1999"], (0, 1999)),
    (["--years=-1999"], (0, 1999)),
    (["--years", "1995"], (1995, 1995)),
])
def test_years(run, servers, years, bounds):
    code, _, err = run("recommend", "42", *years)
    assert code == 0, err
    sent = servers.recommender.requests("Recommend")[0].filter
    assert (sent.min_year, sent.max_year) == bounds


def test_only_file_reads_one_id_a_line(run, servers, tmp_path):
    ids = tmp_path / "in-stock.txt"
    ids.write_text("# in stock this week\n1\n2, 3\n\n4  # back order\n")
    code, _, err = run("recommend", "42", "--only", "9", "--only-file", str(ids))
    assert code == 0, err
    assert list(servers.recommender.requests("Recommend")[0].filter.only_movie_ids) == [9, 1, 2, 3, 4]


@pytest.mark.parametrize(("args", "message"), [
    (["--years", "1999-1990"], "argument --years: '1999-1990' is an inverted range; did you mean 1990-1999?"),
    (["--years", "nineties"], "argument --years: must be a year range: 1990-1999, 1990- (from), -1999 (until)"),
    (["--years", "-"], "argument --years: must be a year range"),
    (["--years", "1990-1999-2000"], "argument --years: must be a year range"),
    (["--years", "0"], "argument --years: a year is between 1 and 9999; got 0 in '0'"),
    (["--years", "1990-10000"], "argument --years: a year is between 1 and 9999; got 10000"),
    (["--exclude", "50,star-wars"], "argument --exclude: must be comma-separated movie ids, e.g. 50,181; got"),
    (["--exclude", "50,,181"], "argument --exclude: must be comma-separated movie ids"),
    (["--only", ""], "argument --only: must be comma-separated movie ids"),
    (["--genre", " "], "argument --genre: must be a genre name, e.g. Comedy; got an empty one"),
    (["--exclude-genre", ""], "argument --exclude-genre: must be a genre name"),
    (["--all-genres"], "--all-genres needs at least one --genre"),
    (["--all-genres", "--exclude-genre", "Horror"], "--all-genres needs at least one --genre"),
])
@pytest.mark.parametrize("command", [["recommend", "42"], ["similar", "50"]])
def test_bad_filter_flags_are_usage_errors_naming_the_flag(run, servers, command, args, message):
    code, out, err = run(*command, *args)
    assert code == 2 and out == ""
    assert f"usage: movierec {command[0]}" in err and message in err and "Traceback" not in err
    assert servers.recommender.calls == []


def test_bad_only_files_are_usage_errors(run, servers, tmp_path):
    empty, bad = tmp_path / "empty.txt", tmp_path / "bad.txt"
    empty.write_text("# nothing in stock\n\n")
    bad.write_text("1\n2 three\n")
    for path, message in [(tmp_path / "missing.txt", "argument --only-file: cannot read "),
                          (empty, "holds no movie ids (answering only from none would mean answering nothing"),
                          (bad, f"argument --only-file: line 2 of {bad} is not movie ids: '2 three'")]:
        code, out, err = run("recommend", "42", "--only-file", str(path))
        assert code == 2 and out == "" and message in err, err
    assert servers.recommender.calls == []


def _answer(items: int, **fields):
    return lambda r, c: recommender_pb2.RecommendResponse(items=rec_items(items), model_version=7, **fields)


def test_fewer_than_k_says_how_many_passed_the_filter(run, servers):
    servers.recommender.handlers["Recommend"] = _answer(2, eligible_movies=2)
    code, out, err = run("recommend", "42", "--genre", "Film-Noir")
    assert code == 0
    assert err.strip() == "note: only 2 movies passed the filter (seen and hidden movies left out); asked for 10"
    assert len(out.splitlines()) == 4  # header, 2 movies, the version line: the note is not in the answer
    code, _, err = run("recommend", "42", "--include-seen")
    assert err.strip() == "note: only 2 movies could be answered (hidden movies left out); asked for 10"


def test_exactly_k_or_an_older_server_adds_no_note(run, servers):
    servers.recommender.handlers["Recommend"] = _answer(2, eligible_movies=1500)
    assert run("recommend", "42", "-k", "2", "--genre", "Drama")[2] == ""
    servers.recommender.handlers["Recommend"] = _answer(2)  # eligible_movies left 0 while answering: not said
    assert run("recommend", "42", "--genre", "Drama")[2] == ""


def test_nothing_passed(run, servers):
    servers.recommender.handlers["Recommend"] = _answer(0)
    code, out, err = run("recommend", "42", "--only", "5", "-k", "1")
    assert code == 0 and out.splitlines()[-1] == "model version 7, cold start: no"
    assert err.strip() == "note: only 0 movies passed the filter (seen and hidden movies left out); asked for 1"


def test_unknown_filter_ids_are_named_with_the_flags_that_gave_them(run, servers):
    servers.recommender.handlers["Recommend"] = _answer(3, unknown_movie_ids=[99999, 88888], eligible_movies=3)
    code, _, err = run("recommend", "42", "-k", "3", "--recent", "50", "--exclude", "99999", "--only", "88888,50")
    assert code == 0
    assert err.strip() == ("note: model version 7 does not know movie(s) 99999, 88888 given in --recent, --exclude, "
                           "--only; ignored")


def test_similar_notes_and_json(run, servers):
    servers.recommender.handlers["SimilarItems"] = lambda r, c: recommender_pb2.SimilarItemsResponse(
        movie=rec_items(1)[0], items=rec_items(3)[1:], model_version=7, unknown_movie_ids=list(range(100, 130)),
        eligible_movies=2)
    code, out, err = run("similar", "50", "--genre", "Action", "--exclude", ",".join(map(str, range(100, 130))))
    assert code == 0
    assert out.splitlines()[0] == "movies similar to 50 Star Wars (1977) [1977; Action, Sci-Fi]:"
    unknown, short = err.strip().splitlines()
    assert unknown.startswith("note: model version 7 does not know movie(s) 100, 101,")
    assert unknown.endswith("118, 119, ... (30 in all) given in --exclude; ignored")
    assert short == "note: only 2 movies passed the filter (the movie itself and hidden movies left out); asked for 10"
    code, out, err = run("--json", "similar", "50", "--genre", "Action")
    data = json.loads(out)
    assert code == 0 and err == ""
    assert data["eligible_movies"] == 2 and data["unknown_movie_ids"] == list(range(100, 130))


def test_recommend_json_carries_eligible_and_unknown(run, servers):
    servers.recommender.handlers["Recommend"] = _answer(1, eligible_movies=1, unknown_movie_ids=[5])
    code, out, err = run("recommend", "42", "--only", "5,50", "--json")
    data = json.loads(out)
    assert code == 0 and err == ""  # notes are for people; the JSON carries the numbers
    assert data["eligible_movies"] == 1 and data["unknown_movie_ids"] == [5] and len(data["items"]) == 1
    servers.recommender.handlers.clear()
    assert json.loads(run("recommend", "42", "--json")[1])["eligible_movies"] is None  # the server did not say


def test_render_notes_directly():
    assert render.short_answer_note(10, 10, 3, filtered=True, left_out="x") is None  # k came back
    assert render.short_answer_note(10, 3, None, filtered=True, left_out="x") is None  # count unknown
    assert render.short_answer_note(10, 1, 1, filtered=True, left_out="hidden movies") == \
        "note: only 1 movie passed the filter (hidden movies left out); asked for 10"
    assert render.id_list(list(range(3))) == "0, 1, 2"
    assert render.id_list(list(range(2000)), at_most=2) == "0, 1, ... (2,000 in all)"
    assert render.unknown_note(3, [7], ["--recent"]) == "note: model version 3 does not know recent movie(s) 7; ignored"


# --------------------------------------------------------------------------- status


def test_status(run):
    code, out, _ = run("status")

    assert code == 0
    assert "served version: 7 (two_tower)" in out
    assert "pinned version: none" in out and "943 / 1682" in out
    assert "genres (2):     Action 251, Drama 725" in out
    rows = [line.split() for line in out.splitlines()]
    assert ["8", "REJECTED", "bpr", "-", "NaN", "scores"] in rows
    assert ["7", "SERVING", "two_tower", "0.1250"] in rows
    assert "hidden movies:  none" in out and "hidden problem" not in out


def test_status_shows_the_hidden_movies_and_their_problem(run, servers):
    servers.recommender.handlers["GetModelStatus"] = lambda r, c: recommender_pb2.ModelStatus(
        served_version=7, hidden_movies=1234, hidden_sequence=5,
        hidden_problem="hidden-movie rules are not signed; the rules of sequence 5 stay in force")
    code, out, _ = run("status")
    assert code == 0
    assert "hidden movies:  1,234 (rules sequence 5)" in out
    assert "hidden problem: hidden-movie rules are not signed; the rules of sequence 5 stay in force" in out
    assert "genres: none (the served version has no movie metadata; retrain)" in out
    data = json.loads(run("--json", "status")[1])
    assert (data["hidden_movies"], data["hidden_sequence"]) == (1234, 5)
    assert data["hidden_problem"].startswith("hidden-movie rules are not signed")


def test_status_json(run):
    code, out, _ = run("status", "--json")
    data = json.loads(out)
    assert code == 0 and data["served_version"] == 7 and data["loaded_at"] == T0.isoformat()
    assert data["versions"][0]["state"] == "REJECTED"
    assert data["genres"] == [{"name": "Action", "movies": 251}, {"name": "Drama", "movies": 725}]


# --------------------------------------------------------------------------- trainer


def test_train_prints_the_job_and_sends_the_options(run, servers):
    code, out, err = run(
        "train", "--model", "two_tower", "--epochs", "5", "--embedding-dim", "64", "--batch-size", "256",
        "--learning-rate", "0.1", "--holdout", "ua", "--holdout-size", "10", "--seed", "1",
        "--ratings", "ml/u.data", "--items", "ml/u.item", "--idempotency-key", "k1",
    )  # fmt: skip

    assert code == 0, err
    assert out.strip() == "job job-1 QUEUED"
    (request,) = servers.trainer.requests("Train")
    assert (request.model, request.epochs, request.seed, request.idempotency_key) == ("two_tower", 5, 1, "k1")
    assert request.hyperparameters.embedding_dim == 64 and request.hyperparameters.batch_size == 256
    assert request.hyperparameters.learning_rate == pytest.approx(0.1)
    assert (request.evaluation.holdout, request.evaluation.holdout_size) == ("ua", 10)
    assert (request.dataset.ratings_path, request.dataset.items_path) == ("ml/u.data", "ml/u.item")
    assert not request.evaluation.HasField("refit")  # the trainer's default: refit


def test_train_no_refit(run, servers):
    code, _, err = run("train", "--model", "ease", "--no-refit")

    assert code == 0, err
    (request,) = servers.trainer.requests("Train")
    assert request.evaluation.HasField("refit") and request.evaluation.refit is False
    assert not request.quality_gate.require_beating_baseline


def test_train_require_beating_baseline(run, servers):
    code, _, err = run("train", "--model", "ease", "--require-beating-baseline")

    assert code == 0, err
    (request,) = servers.trainer.requests("Train")
    assert request.quality_gate.require_beating_baseline and not request.quality_gate.require_no_regression


def test_train_watch_shows_progress_then_metrics(run, servers):
    code, out, err = run("train", "--model", "two_tower", "--watch")

    assert code == 0, err
    assert "job job-1 SUCCEEDED: published as version 7" in out
    rows = [line.split() for line in out.splitlines()]
    assert ["recall_at_10", "0.1250", "0.0625"] in rows
    assert "epoch" in err and "loss=" in err  # the tqdm bar, on stderr
    assert len(servers.trainer.requests("WatchJob")) == 1


def test_train_watch_json_prints_the_final_job(run):
    code, out, _ = run("--json", "train", "--model", "two_tower", "--watch")
    job = json.loads(out)
    assert code == 0 and job["state"] == "SUCCEEDED" and job["done"] is True and job["model_version"] == 7


def test_watch_a_failing_job_exits_1(run, servers):
    def failing(request, context):
        yield make_job(state="RUNNING", epoch=1)
        yield finished_job(state="FAILED", error="loss became NaN")

    servers.trainer.handlers["WatchJob"] = failing
    servers.trainer.handlers["GetJob"] = lambda r, c: make_job(state="RUNNING")

    code, out, err = run("watch", "job-1")

    assert code == 1
    assert "job job-1 FAILED: loss became NaN" in err


def test_watch_an_unpublished_job(run, servers):
    refused = finished_job(published=False, model_version=0, not_published_reason="recall 0.01 below floor 0.05")
    servers.trainer.handlers["GetJob"] = lambda r, c: refused

    code, out, _ = run("watch", "job-1")

    assert code == 0
    assert "not published (recall 0.01 below floor 0.05)" in out
    assert servers.trainer.requests("WatchJob") == []  # already finished: nothing to follow


def test_jobs_table(run, servers):
    code, out, _ = run("jobs", "--limit", "5")

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["id", "model", "state", "version", "recall@10", "created"]
    assert lines[1].split()[:5] == ["job-2", "two_tower", "SUCCEEDED", "7", "0.1250"]
    assert lines[2].split()[:5] == ["job-1", "two_tower", "FAILED", "-", "-"]
    assert servers.trainer.requests("ListJobs")[0].limit == 5


def test_job_details(run):
    code, out, _ = run("job", "job-1")

    assert code == 0
    assert "state:" in out and "SUCCEEDED" in out
    assert "published as version 7" in out and "evaluated on: ua" in out
    assert ["recall_at_10", "0.1250", "0.0625"] in [line.split() for line in out.splitlines()]


def test_job_details_with_the_neighbourhood_baseline(run, servers):
    servers.trainer.handlers["GetJob"] = lambda r, c: finished_job(baseline_metrics={
        "recall_at_10": 0.0625, "neighbourhood_recall_at_10": 0.1, "neighbourhood_users_evaluated": 300})
    code, out, _ = run("job", "job-1")
    rows = [line.split() for line in out.splitlines()]
    assert code == 0
    assert ["metric", "model", "popularity", "neighbourhood"] in rows
    assert ["recall_at_10", "0.1250", "0.0625", "0.1000"] in rows
    assert ["users_evaluated", "-", "-", "300.0000"] in rows


def test_cancel(run, servers):
    code, out, _ = run("cancel", "job-9")
    assert code == 0 and out.strip() == "job job-9 CANCELLED"
    assert servers.trainer.requests("CancelJob")[0].job_id == "job-9"


# --------------------------------------------------------------------------- errors and exit codes


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_server_invalid_argument_is_a_usage_error(run, servers):
    servers.recommender.handlers["Recommend"] = abort(grpc.StatusCode.INVALID_ARGUMENT, "k must be in 1..500")

    code, out, err = run("recommend", "42", "-k", "9999")

    assert code == 2 and out == ""
    line = _one_line(err)
    assert line.startswith("error: ") and line.endswith("k must be in 1..500 (INVALID_ARGUMENT)")


def test_unknown_job_exits_1(run):
    code, _, err = run("job", "nope")
    assert code == 1
    assert _one_line(err).endswith("no job 'nope' (NOT_FOUND)")


def test_unreachable_server_exits_1(run):
    code, _, err = run("--recommender", "127.0.0.1:1", "status")
    line = _one_line(err)
    assert code == 1 and line.startswith("error: GetModelStatus at 127.0.0.1:1") and line.endswith("(UNAVAILABLE)")


def test_deadline_exits_1(run, servers):
    import time

    servers.trainer.handlers["ListJobs"] = lambda r, c: time.sleep(1.0)
    code, _, err = run("--timeout", "0.2", "jobs")
    assert code == 1 and _one_line(err).endswith("(DEADLINE_EXCEEDED)")


@pytest.mark.parametrize(
    "args",
    [
        ["recommend"],  # missing user
        ["recommend", "1", "-k", "0"],
        ["similar", "star-wars"],
        ["train"],  # --model is required
        ["frobnicate"],
        ["--timeout", "-1", "status"],
    ],
)
def test_bad_usage_exits_2(run, args):
    code, out, err = run(*args)
    assert code == 2 and out == "" and "usage:" in err and "Traceback" not in err


def test_synth_is_movierec_synth_not_a_movierec_command(run, tmp_path):
    """The generator runs locally and needs the trainer's code; the client needs only the contract."""
    code, out, err = run("synth", "--out", str(tmp_path / "d"))
    assert code == 2 and out == "" and "invalid choice: 'synth'" in err
    assert not (tmp_path / "d").exists()


def test_help_exits_0(run):
    code, out, _ = run("--help")
    assert code == 0 and "recommend" in out and "MOVIEREC_TOKEN" in out


def test_missing_token_file_is_a_usage_error(run, tmp_path):
    code, _, err = run("--token-file", str(tmp_path / "nope"), "status")
    assert code == 2 and _one_line(err).startswith("error: cannot read token file")


def test_token_file_and_environment_token_are_sent(run, servers, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    assert run("--token-file", str(token_file), "status")[0] == 0
    monkeypatch.setenv("MOVIEREC_TOKEN", "env-token")
    assert run("jobs")[0] == 0

    assert servers.recommender.metadata("GetModelStatus")[0]["authorization"] == "Bearer file-token"
    assert servers.trainer.metadata("ListJobs")[0]["authorization"] == "Bearer env-token"


# --------------------------------------------------------------------------- replicas


def test_recommend_through_several_replicas(run):
    replicas = [Replica() for _ in range(2)]
    try:
        addresses = ",".join(r.address for r in replicas)
        for _ in range(4):
            code, out, err = run("--recommender", addresses, "recommend", "42", "-k", "2")
            assert code == 0, err
            assert out.splitlines()[-1] == "model version 7, cold start: no"
        assert sum(len(r.recommender.requests("Recommend")) for r in replicas) == 4
    finally:
        for replica in replicas:
            replica.stop()


def test_recommender_help_names_the_replica_forms(run):
    code, out, _ = run("--help")
    assert code == 0 and "HOST:PORT[,HOST:PORT...]" in out and "dns:///NAME:PORT" in out


def test_several_trainer_addresses_are_a_usage_error(run):
    code, _, err = run("--trainer", "127.0.0.1:1,127.0.0.1:2", "jobs")
    assert code == 2 and "takes one address" in err
