"""Operators' hidden movies (movierec_common.hidden_movies): the document in the model root, the trainer's
read-modify-write and its answers, and a recommender's source and registry following it, on real files in a
temp folder and on a real S3 API (moto).

No SavedModel is needed: hidden rules are read and applied whatever a replica serves, an empty root
included. The source and the registry are driven one ``poll_once`` at a time, so every step is an event.
"""

from __future__ import annotations

import json
import threading

import grpc
import numpy as np
import pytest

from movierec.v1 import trainer_pb2
from movierec_common import hidden_movies, root_lease, signing
from movierec_common.hidden_movies import (
    HIDDEN_FILE,
    MAX_IDS_PER_CALL,
    NO_HIDDEN_RULES,
    HiddenListFull,
    HiddenRequestInvalid,
    HiddenRules,
    HiddenRulesDamaged,
    hide,
    read_rules,
    unhide,
)
from movierec_common.model_root import RootUnreachable, filesystem
from recommender_service.registry import ModelRegistry
from recommender_service.source import RootSource
from tests.s3 import s3_server
from trainer_service import servicer
from trainer_service.config import TrainerConfig

KEYS = signing.PublishingKeys((b"a" * 20 + b"-first-publishing-key",))
OTHER_KEYS = signing.PublishingKeys((b"c" * 20 + b"-nobody-knows-this-key",))


def ids(rules: HiddenRules) -> list[int]:
    return rules.movie_ids.tolist()


# --------------------------------------------------------------------------- the document and the trainer's side


def test_hide_and_unhide_are_union_and_difference_and_every_change_grows_the_sequence(tmp_path):
    root = str(tmp_path / "models")
    assert read_rules(root) is NO_HIDDEN_RULES and not (tmp_path / "models" / HIDDEN_FILE).exists()

    first = hide(root, [181, 50, 50])
    assert ids(first) == [50, 181] and first.sequence > 0
    on_disk = json.loads((tmp_path / "models" / HIDDEN_FILE).read_text())
    assert on_disk["movie_ids"] == [50, 181] and on_disk["sequence"] == first.sequence and "signature" not in on_disk

    second = hide(root, [7, 181])
    assert ids(second) == [7, 50, 181] and second.sequence > first.sequence
    assert hide(root, [50]).sequence == read_rules(root).sequence == second.sequence  # nothing new: not written

    third = unhide(root, [50, 999])  # 999 was never hidden: ignored
    assert ids(third) == [7, 181] and third.sequence > second.sequence
    assert ids(read_rules(root)) == [7, 181] and read_rules(root).sequence == third.sequence
    assert not read_rules(root).movie_ids.flags.writeable  # shared by every request: nobody may change it

    last = unhide(root, [7, 181])
    assert ids(last) == [] and last.sequence > third.sequence  # "nothing hidden" is a document too, and newer


def test_concurrent_hides_in_one_trainer_lose_nothing(tmp_path):
    root = str(tmp_path)
    threads = [threading.Thread(target=hide, args=(root, [movie])) for movie in range(1, 17)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ids(read_rules(root)) == list(range(1, 17))


def test_limits_per_call_and_in_all_are_refused_with_the_numbers(tmp_path, monkeypatch):
    root = str(tmp_path)
    with pytest.raises(HiddenRequestInvalid, match="no movie ids to hide"):
        hide(root, [])
    with pytest.raises(HiddenRequestInvalid, match="10,001 movie ids in one call; at most 10,000"):
        unhide(root, list(range(MAX_IDS_PER_CALL + 1)))
    hide(root, list(range(1, MAX_IDS_PER_CALL + 1)))  # exactly the limit is fine

    monkeypatch.setattr(hidden_movies, "MAX_HIDDEN_MOVIES", MAX_IDS_PER_CALL + 2)
    with pytest.raises(HiddenListFull, match=r"these 3 ids would hide 10,003 movies; at most 10,002 .* \(10,000 are"):
        hide(root, [-1, -2, -3])
    assert read_rules(root).movie_ids.size == MAX_IDS_PER_CALL  # nothing written
    hide(root, [-1, -2])
    (tmp_path / HIDDEN_FILE).write_text(json.dumps({"movie_ids": list(range(10_003)), "sequence": 9}))
    with pytest.raises(HiddenRulesDamaged, match="holds 10,003 movie ids; at most 10,002"):
        read_rules(root)


@pytest.mark.parametrize(("content", "reason"), [
    (b"{not json", "is not valid JSON"),
    (b"[1, 2]", "is not a JSON object"),
    (json.dumps({"movie_ids": [1, 2]}).encode(), "has no sequence number"),
    (json.dumps({"movie_ids": [1, 2], "sequence": True}).encode(), "has no sequence number"),
    (json.dumps({"sequence": 3}).encode(), "holds no list of whole-number movie ids"),
    (json.dumps({"movie_ids": [1, 2.5], "sequence": 3}).encode(), "holds no list of whole-number movie ids"),
    (json.dumps({"movie_ids": [1, False], "sequence": 3}).encode(), "holds no list of whole-number movie ids"),
    (json.dumps({"movie_ids": [2**70], "sequence": 3}).encode(), "beyond 64 bits"),
])
def test_a_damaged_document_is_refused_and_the_trainer_does_not_build_on_it(tmp_path, content, reason):
    (tmp_path / HIDDEN_FILE).write_bytes(content)
    with pytest.raises(HiddenRulesDamaged, match=reason):
        read_rules(str(tmp_path))
    with pytest.raises(HiddenRulesDamaged):  # a union with unknown rules would drop them
        hide(str(tmp_path), [5])
    assert (tmp_path / HIDDEN_FILE).read_bytes() == content
    (tmp_path / HIDDEN_FILE).unlink()  # the repair: remove it and hide again
    assert ids(hide(str(tmp_path), [5])) == [5]


def test_an_unordered_hand_written_document_reads_sorted_and_distinct(tmp_path):
    (tmp_path / HIDDEN_FILE).write_text(json.dumps({"movie_ids": [9, 3, 9, 1], "sequence": 4}))
    rules = read_rules(str(tmp_path))
    assert ids(rules) == [1, 3, 9] and rules.sequence == 4 and rules.movie_ids.dtype == np.int64


def test_signed_rules_verify_under_the_keys_and_nothing_else(tmp_path):
    root = str(tmp_path)
    signed = hide(root, [3, 1], KEYS)
    document = json.loads((tmp_path / HIDDEN_FILE).read_text())
    assert document["signature"]["kind"] == "hidden" and document["movie_ids"] == [1, 3]
    assert ids(read_rules(root, KEYS)) == [1, 3] and read_rules(root, KEYS).sequence == signed.sequence
    assert ids(read_rules(root)) == [1, 3]  # without keys: read as written, unverified
    with pytest.raises(HiddenRulesDamaged, match="not signed by a known publishing key"):
        read_rules(root, OTHER_KEYS)
    with pytest.raises(HiddenRulesDamaged, match="not signed by a known publishing key"):
        hide(root, [4], OTHER_KEYS)  # a trainer does not sign what it cannot verify

    document["movie_ids"] = [1]  # altered after signing: a takedown quietly lifted
    (tmp_path / HIDDEN_FILE).write_text(json.dumps(document))
    with pytest.raises(HiddenRulesDamaged, match="altered since it was signed"):
        read_rules(root, KEYS)
    (tmp_path / HIDDEN_FILE).write_text(json.dumps({"movie_ids": [1], "sequence": signed.sequence + 1}))
    with pytest.raises(HiddenRulesDamaged, match="carries no signature"):
        read_rules(root, KEYS)
    # A signed pin is no set of rules, whatever its fields say.
    pin = json.loads(signing.pin_document(KEYS, 2))
    (tmp_path / HIDDEN_FILE).write_text(json.dumps({**pin, "movie_ids": [1]}))
    with pytest.raises(HiddenRulesDamaged, match="not a 'hidden'"):
        read_rules(root, KEYS)


# --------------------------------------------------------------------------- the trainer's answers


class Aborted(Exception):
    pass


class Context:
    def abort(self, code, details):
        raise Aborted(code, details)

    def time_remaining(self):
        return None  # no deadline


def _answer(root: str, method: str, movie_ids=(), keys=None):
    service = servicer.TrainerServicer(manager=None, config=TrainerConfig(model_root=root, publish_keys=keys))
    request = (trainer_pb2.ListHiddenMoviesRequest() if method == "ListHiddenMovies" else
               trainer_pb2.HideMoviesRequest(movie_ids=list(movie_ids)))
    try:
        return getattr(service, method)(request, Context())
    except Aborted as aborted:
        return aborted.args


def test_the_trainer_answers_each_refusal_with_its_status(tmp_path, monkeypatch):
    root = str(tmp_path)
    answer = _answer(root, "HideMovies", [20, 10])
    assert list(answer.movie_ids) == [10, 20] and answer.sequence > 0
    assert _answer(root, "ListHiddenMovies") == answer
    assert list(_answer(root, "UnhideMovies", [10]).movie_ids) == [20]

    code, message = _answer(root, "HideMovies")
    assert code is grpc.StatusCode.INVALID_ARGUMENT and message == "no movie ids to hide: give at least one"
    code, message = _answer(root, "HideMovies", range(MAX_IDS_PER_CALL + 5))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and message.startswith("10,005 movie ids in one call")
    monkeypatch.setattr(hidden_movies, "MAX_HIDDEN_MOVIES", 2)
    code, message = _answer(root, "HideMovies", [1, 2])
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 2 can be hidden" in message

    code, message = _answer(root, "HideMovies", [1], keys=KEYS)  # the unsigned document: not built on
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "not signed by a known publishing key" in message and "remove it from the model root" in message
    code, _ = _answer(root, "ListHiddenMovies", keys=KEYS)
    assert code is grpc.StatusCode.FAILED_PRECONDITION

    def lost(where):
        raise root_lease.RootLeaseLost("taken over by host-b pid 7")

    monkeypatch.setattr(root_lease, "confirm", lost)
    code, message = _answer(root, "HideMovies", [5])
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "no longer holds the model root" in message
    assert list(_answer(root, "ListHiddenMovies").movie_ids) == [20]  # nothing written


def test_the_trainer_answers_an_unreachable_root_unavailable(monkeypatch):
    def unreachable(root, movie_ids, keys, before_write=None):
        raise RootUnreachable("writing s3://m/.hidden.json failed: EndpointConnectionError")

    monkeypatch.setattr(hidden_movies, "hide", unreachable)
    code, message = _answer("s3://m", "HideMovies", [1])
    assert code is grpc.StatusCode.UNAVAILABLE
    assert message.startswith("the hidden movies could not be changed in the model root (nothing changed): writing")


# --------------------------------------------------------------------------- a recommender's side


def test_the_source_reads_rules_at_every_poll_and_keeps_the_reading_while_the_document_is_unchanged(tmp_path):
    root = str(tmp_path)
    source = RootSource(root)
    assert source.snapshot().hidden.rules is NO_HIDDEN_RULES
    hide(root, [4, 2])
    first = source.snapshot(read_pin=False).hidden  # a replica held by --version reads them too
    assert first.readable and ids(first.rules) == [2, 4]
    assert source.snapshot().hidden.rules is first.rules  # the same document: the same value, not re-read
    hide(root, [6])
    assert ids(source.snapshot().hidden.rules) == [2, 4, 6]
    (tmp_path / HIDDEN_FILE).unlink()  # without keys a removal is followed: nothing hidden
    assert source.snapshot().hidden.rules is NO_HIDDEN_RULES


def test_with_keys_the_source_follows_signed_rules_only_and_never_an_older_or_removed_set(tmp_path):
    root = str(tmp_path)
    source = RootSource(root, KEYS)
    hide(root, [1, 2], KEYS)
    old_bytes = (tmp_path / HIDDEN_FILE).read_bytes()
    assert ids(source.snapshot().hidden.rules) == [1, 2]
    newer = hide(root, [3], KEYS)
    assert source.snapshot().hidden.rules.sequence == newer.sequence

    (tmp_path / HIDDEN_FILE).write_bytes(old_bytes)  # a replay: correctly signed, older
    replayed = source.snapshot().hidden
    assert not replayed.readable and "older (sequence" in replayed.problem and "not followed" in replayed.problem
    (tmp_path / HIDDEN_FILE).unlink()  # a removal would lift every takedown
    removed = source.snapshot().hidden
    assert not removed.readable and "removing signed rules does not lift them" in removed.problem
    (tmp_path / HIDDEN_FILE).write_text(json.dumps({"movie_ids": [], "sequence": newer.sequence + 5}))
    assert "not signed by a known publishing key" in source.snapshot().hidden.problem

    (tmp_path / HIDDEN_FILE).unlink()  # the repair (the trainer does not build on it): remove it, hide again
    lifted = hide(root, [1, 2, 3], KEYS)
    assert lifted.sequence > newer.sequence  # newer than anything applied, though written after a removal
    assert ids(source.snapshot().hidden.rules) == [1, 2, 3]
    assert ids(RootSource(root, KEYS).snapshot().hidden.rules) == [1, 2, 3]  # a fresh replica follows them too


def test_the_registry_applies_rules_keeps_the_last_ones_when_unreadable_and_says_why(tmp_path, caplog):
    root = str(tmp_path)
    registry = ModelRegistry(root, pinned_version=7)  # held by --version, serving nothing: rules apply anyway
    registry.poll_once()
    assert registry.hidden_rules() is NO_HIDDEN_RULES and registry.hidden_problem == ""

    rules = hide(root, [11, 12])
    with caplog.at_level("INFO", logger="recommender_service.registry"):
        registry.poll_once()
        applied = registry.hidden_rules()
        assert ids(applied) == [11, 12] and applied.sequence == rules.sequence
        registry.poll_once()
        assert registry.hidden_rules() is applied  # unchanged: the same value for every request

        (tmp_path / HIDDEN_FILE).write_text("{damaged")
        for _ in range(3):
            registry.poll_once()
    assert registry.hidden_rules() is applied  # the last rules stay in force
    assert registry.hidden_problem.startswith("the hidden movies (")
    assert registry.hidden_problem.endswith(f"the last hidden movies applied stay in force (2 movies, sequence "
                                            f"{rules.sequence})")
    events = [record.getMessage() for record in caplog.records]
    assert events.count("hidden movies changed") == 1 and events.count("hidden movies not applied") == 1

    (tmp_path / HIDDEN_FILE).unlink()
    registry.poll_once()
    assert registry.hidden_rules() is NO_HIDDEN_RULES and registry.hidden_problem == ""


def test_on_an_object_store_rules_round_trip_and_an_outage_keeps_the_last_ones(tmp_path):
    root = "s3://hidden/root"
    with s3_server("hidden") as s3:
        # Held by --version: an outage then costs a listing and the rules' stat, not the pin's read too.
        registry = ModelRegistry(root, cache_dir=str(tmp_path / "cache"), publish_keys=KEYS, pinned_version=1)
        try:
            registry.poll_once()
            assert registry.hidden_rules() is NO_HIDDEN_RULES
            first = hide(root, [30, 10, 20], KEYS)
            assert ids(unhide(root, [20], KEYS)) == [10, 30]
            assert read_rules(root, KEYS).sequence > first.sequence
            fs, base = filesystem(root)
            assert json.loads(fs.cat_file(f"{base}/{HIDDEN_FILE}"))["signature"]["kind"] == "hidden"
            registry.poll_once()
            applied = registry.hidden_rules()
            assert ids(applied) == [10, 30] and registry.hidden_problem == ""

            s3.stop()  # an outage: the rules cannot be read
            try:
                registry.poll_once()
                assert registry.hidden_rules() is applied
                assert registry.hidden_problem.startswith("RootUnreachable reading the hidden movies; the last")
            finally:
                s3.start()
            registry.poll_once()
            assert registry.hidden_rules() is applied and registry.hidden_problem == ""
            assert ids(hide(root, [40], KEYS)) == [10, 30, 40]
            registry.poll_once()
            assert ids(registry.hidden_rules()) == [10, 30, 40]
        finally:
            registry.stop()
