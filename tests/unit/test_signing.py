"""Publishing keys (movierec_common.signing): the key file, signed documents, and
one recommender's registry refusing what is not signed, on real SavedModels in a
temp folder and on a real S3 API (moto).

The registry is driven one ``poll_once`` at a time, so every step is an event.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from movierec_common import signing
from movierec_common.artifact import METADATA_FILE, SIGNATURE_FILE, VersionMetadata, file_manifest
from movierec_common.model_root import PIN_FILE, PinDamaged, filesystem, read_pin, write_pin
from movierec_common.signing import PublishingKeys, SignatureError, SigningConfigError, load_keys
from recommender_service.registry import REJECTED, SERVING, ModelRegistry
from recommender_service.validation import validate_version
from tests.artifacts import tiny_artifact
from tests.s3 import s3_server
from trainer_service.publisher import pin_version, publish

KEY_A = "a" * 20 + "-first-publishing-key"
KEY_B = "b" * 20 + "-second-publishing-key"
KEY_C = "c" * 20 + "-nobody-knows-this-key"
METADATA = VersionMetadata(model_kind="two_tower", created_at="2024-05-01T12:00:00+00:00")


def keys(*values: str) -> PublishingKeys:
    return PublishingKeys(tuple(value.encode() for value in values))


class CountingValidate:
    """The real validation, counting its calls: 'refused before anything runs' means it was never called."""

    def __init__(self):
        self.calls = 0

    def __call__(self, path):
        self.calls += 1
        return validate_version(path)


def state(registry: ModelRegistry, version: int):
    return next(info for info in registry.status()[1] if info.version == version)


# --------------------------------------------------------------------------- key files


def test_a_key_file_holds_keys_one_per_line_with_comments(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# new key first: the trainer signs with it\n{KEY_B}\n\n  {KEY_A}  \n")
    assert load_keys(str(path)).keys == (KEY_B.encode(), KEY_A.encode())
    assert load_keys(str(path)).signing_key == KEY_B.encode()


@pytest.mark.parametrize("text, expected", [
    ("# only a comment\n", "holds no key"),
    (f"{KEY_A}\nshort-key\n", "key 2 is shorter than 32 characters"),
])
def test_an_unusable_key_file_is_refused_without_echoing_a_key(tmp_path, text, expected):
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(SigningConfigError, match=expected) as caught:
        load_keys(str(path))
    assert "short-key" not in str(caught.value) and KEY_A not in str(caught.value)
    with pytest.raises(SigningConfigError, match="cannot read"):
        load_keys(str(tmp_path / "missing"))


def test_both_servers_take_the_key_file_flag_and_refuse_a_bad_one(tmp_path, capsys):
    from recommender_service.server import parse_args as recommender_args
    from trainer_service.server import parse_args as trainer_args

    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(KEY_A + "\n")
    bad.write_text("too-short\n")
    for parse in (trainer_args, recommender_args):
        assert parse(["--model-root", "m", "--publish-key-file", str(good)]).publish_keys == keys(KEY_A)
        assert parse(["--model-root", "m"]).publish_keys is None
        with pytest.raises(SystemExit):
            parse(["--model-root", "m", "--publish-key-file", str(bad)])
        assert "shorter than 32 characters" in capsys.readouterr().err


# --------------------------------------------------------------------------- signed documents


def test_a_signed_document_verifies_under_any_held_key_and_nothing_else():
    raw = keys(KEY_A, KEY_B).sign("rules", {"hidden": [1, 2], "n": 1.5})
    assert json.loads(raw)["hidden"] == [1, 2]  # the fields stay readable by code that knows no signatures
    assert signing.read_document(keys(KEY_B, KEY_A), "rules", raw, "rules") == {"hidden": [1, 2], "n": 1.5}
    assert signing.read_document(None, "rules", raw, "rules") == {"hidden": [1, 2], "n": 1.5}
    with pytest.raises(SignatureError, match="not signed by a known publishing key"):
        signing.read_document(keys(KEY_C), "rules", raw, "rules")
    with pytest.raises(SignatureError, match="its signature is for a 'rules', not a 'pin'"):
        signing.read_document(keys(KEY_A), "pin", raw, "the pin")
    altered = json.loads(raw)
    altered["hidden"] = [1]
    with pytest.raises(SignatureError, match="altered"):
        signing.read_document(keys(KEY_A), "rules", json.dumps(altered).encode(), "rules")
    with pytest.raises(SignatureError, match="carries no signature"):
        signing.read_document(keys(KEY_A), "rules", b'{"hidden": []}', "rules")


def test_a_version_signature_binds_the_metadata_bytes_and_the_number():
    signed = signing.version_signature(keys(KEY_A), 3, b'{"files": 1}')
    signing.check_version_signature(keys(KEY_B, KEY_A), 3, b'{"files": 1}', signed)
    with pytest.raises(SignatureError, match="its signature is for version 3"):
        signing.check_version_signature(keys(KEY_A), 9, b'{"files": 1}', signed)
    with pytest.raises(SignatureError, match="metadata.json is not the one that was signed"):
        signing.check_version_signature(keys(KEY_A), 3, b'{"files": 2}', signed)
    with pytest.raises(SignatureError, match="version 3 is not signed by a known publishing key"):
        signing.check_version_signature(keys(KEY_C), 3, b'{"files": 1}', signed)
    with pytest.raises(SignatureError, match="has no signature.json"):
        signing.check_version_signature(keys(KEY_A), 3, b'{"files": 1}', None)


# --------------------------------------------------------------------------- versions, in the registry


def test_a_replica_with_keys_rejects_unsigned_and_wrongly_signed_versions_before_running_them(tmp_path):
    root = tmp_path / "models"
    publish(str(root), tiny_artifact(seed=1), METADATA, keys=keys(KEY_A))
    validate = CountingValidate()
    registry = ModelRegistry(str(root), loader=validate, publish_keys=keys(KEY_B, KEY_A))
    registry.poll_once()
    assert registry.current().version == 1 and validate.calls == 1

    publish(str(root), tiny_artifact(seed=2), METADATA)  # no key: unsigned
    publish(str(root), tiny_artifact(seed=3), METADATA, keys=keys(KEY_C))  # a key this replica does not hold
    registry.poll_once()
    assert registry.current().version == 1
    assert state(registry, 2).state == REJECTED and state(registry, 3).state == REJECTED
    assert "version 2 is not signed by a known publishing key" in state(registry, 2).reason
    assert "version 3 is not signed by a known publishing key" in state(registry, 3).reason
    assert validate.calls == 1  # neither was loaded, so neither's graph ran


def test_a_signed_version_copied_to_another_number_or_altered_is_rejected(tmp_path):
    root = tmp_path / "models"
    publish(str(root), tiny_artifact(seed=1), METADATA, keys=keys(KEY_A))
    registry = ModelRegistry(str(root), loader=CountingValidate(), publish_keys=keys(KEY_A))
    registry.poll_once()
    shutil.copytree(root / "1", root / ".tmp-copy")
    os.rename(root / ".tmp-copy", root / "2")  # a replay of version 1 as version 2
    registry.poll_once()
    assert state(registry, 2).state == REJECTED and "its signature is for version 1" in state(registry, 2).reason

    shutil.copytree(root / "1", root / ".tmp-copy")
    os.remove(root / ".tmp-copy" / SIGNATURE_FILE)
    signed = json.loads(signing.version_signature(keys(KEY_A), 3, (root / "1" / METADATA_FILE).read_bytes()))
    (root / ".tmp-copy" / SIGNATURE_FILE).write_text(json.dumps(signed))
    metadata = json.loads((root / ".tmp-copy" / METADATA_FILE).read_text())
    metadata["model_kind"] = "bpr"  # anything changed after signing
    (root / ".tmp-copy" / METADATA_FILE).write_text(json.dumps(metadata))
    os.rename(root / ".tmp-copy", root / "3")
    registry.poll_once()
    assert state(registry, 3).state == REJECTED
    assert "metadata.json is not the one that was signed" in state(registry, 3).reason
    assert registry.current().version == 1


def test_without_keys_a_replica_serves_signed_and_unsigned_versions_as_before(tmp_path):
    root = tmp_path / "models"
    publish(str(root), tiny_artifact(seed=1), METADATA, keys=keys(KEY_A))
    registry = ModelRegistry(str(root), loader=CountingValidate())
    registry.poll_once()
    assert registry.current().version == 1
    assert SIGNATURE_FILE not in file_manifest(str(root / "1"))  # signs the manifest; not listed in it
    publish(str(root), tiny_artifact(seed=2), METADATA)
    registry.poll_once()
    assert registry.current().version == 2


# --------------------------------------------------------------------------- the pin


def test_a_signed_pin_is_followed_an_unsigned_one_is_not(tmp_path):
    root = tmp_path / "models"
    for seed in (1, 2, 3):
        publish(str(root), tiny_artifact(seed=seed), METADATA, keys=keys(KEY_A))
    registry = ModelRegistry(str(root), loader=CountingValidate(), publish_keys=keys(KEY_A))
    registry.poll_once()
    assert registry.current().version == 3

    write_pin(str(root), 1)  # written without the key, by anyone who can write the root
    registry.poll_once()
    assert registry.current().version == 3
    assert "the pin is not signed by a known publishing key" in registry.pin_problem

    assert pin_version(str(root), 2, keys=keys(KEY_A)) == 1  # the trainer's own pin replaces it
    registry.poll_once()
    assert registry.current().version == 2 and registry.pinned_version == 2 and registry.pin_problem == ""
    assert read_pin(str(root)) == 2 and read_pin(str(root), keys(KEY_A)) == 2
    with pytest.raises(PinDamaged, match="not signed by a known publishing key"):
        read_pin(str(root), keys(KEY_C))


def test_an_older_signed_pin_put_back_is_not_followed_and_unpin_is_signed(tmp_path):
    root = tmp_path / "models"
    for seed in (1, 2, 3):
        publish(str(root), tiny_artifact(seed=seed), METADATA, keys=keys(KEY_A))
    registry = ModelRegistry(str(root), loader=CountingValidate(), publish_keys=keys(KEY_A))
    pin_version(str(root), 1, keys=keys(KEY_A))
    old_pin = (root / PIN_FILE).read_bytes()
    registry.poll_once()
    assert registry.current().version == 1

    assert pin_version(str(root), None, keys=keys(KEY_A)) == 1
    assert json.loads((root / PIN_FILE).read_text())["version"] is None  # a signed unpin, not a deletion
    assert read_pin(str(root)) is None  # readers without keys see "unpinned" too
    registry.poll_once()
    assert registry.current().version == 3 and registry.pinned_version is None

    (root / PIN_FILE).write_bytes(old_pin)  # the replay: a genuinely signed pin, older than the unpin
    registry.poll_once()
    assert registry.current().version == 3
    assert "older" in registry.pin_problem and "not followed" in registry.pin_problem


def test_document_sequences_grow_within_one_millisecond_and_past_a_later_previous_one():
    # Many calls land in one millisecond: each must still be newer than the last, or rules written right after
    # a removed document could equal (and so not replace) the ones a replica applied before the removal.
    sequences = [signing.next_sequence() for _ in range(2_000)]
    assert all(later > earlier for earlier, later in zip(sequences, sequences[1:], strict=False))
    ahead = sequences[-1] + 60_000  # a previous document written by a machine whose clock is a minute ahead
    assert signing.next_sequence(ahead) == ahead + 1
    pins = [json.loads(signing.pin_document(keys(KEY_A), 1))["sequence"] for _ in range(3)]
    assert pins[0] > ahead + 1 and pins[1] > pins[0] and pins[2] > pins[1]


def test_without_keys_the_pin_is_written_and_read_as_before(tmp_path):
    root = tmp_path / "models"
    write_pin(str(root), 4)
    assert set(json.loads((root / PIN_FILE).read_text())) == {"version", "updated"}
    assert read_pin(str(root)) == 4
    write_pin(str(root), None)
    assert not (root / PIN_FILE).exists()


# --------------------------------------------------------------------------- object stores


def test_on_an_object_store_an_unsigned_version_is_refused_before_any_download(tmp_path):
    with s3_server("models"):
        root = f"s3://models/signed-{tmp_path.name}"
        publish(root, tiny_artifact(seed=1), METADATA)  # unsigned
        registry = ModelRegistry(root, loader=CountingValidate(), publish_keys=keys(KEY_A),
                                 cache_dir=str(tmp_path / "cache"))
        try:
            registry.poll_once()
            assert "version 1 is not signed by a known publishing key" in state(registry, 1).reason
            assert [files for _, _, files in os.walk(tmp_path / "cache") if files] == []  # nothing was copied
        finally:
            registry.stop()


@pytest.mark.parametrize("bad_key", ["../escaped.bin", "variables/../../escaped.bin", "/absolute.bin"])
def test_on_an_object_store_a_key_with_dot_dot_or_an_absolute_part_is_refused_before_download(tmp_path, bad_key):
    with s3_server("models"):
        root = f"s3://models/paths-{tmp_path.name}"
        publish(root, tiny_artifact(seed=1), METADATA)
        fs, base = filesystem(root)
        fs.pipe_file(f"{base}/1/{bad_key}", b"outside")
        assert any(".." in name or "//" in name for name in fs.find(f"{base}/1")), "the store kept the key as is"
        registry = ModelRegistry(root, loader=CountingValidate(), cache_dir=str(tmp_path / "cache"))
        try:
            registry.poll_once()
            info = state(registry, 1)
            assert info.state == REJECTED and "object key" in info.reason, (info.state, info.reason)
            assert not list((tmp_path).rglob("escaped.bin")) and not list(tmp_path.rglob("absolute.bin"))
            assert [files for _, _, files in os.walk(tmp_path / "cache") if files] == []
        finally:
            registry.stop()


def test_a_signed_version_on_an_object_store_is_served(tmp_path):
    with s3_server("models"):
        root = f"s3://models/good-{tmp_path.name}"
        publish(root, tiny_artifact(seed=1), METADATA, keys=keys(KEY_A))
        registry = ModelRegistry(root, loader=CountingValidate(), publish_keys=keys(KEY_A),
                                 cache_dir=str(tmp_path / "cache"))
        try:
            registry.poll_once()
            assert registry.current() is not None and state(registry, 1).state == SERVING
        finally:
            registry.stop()
