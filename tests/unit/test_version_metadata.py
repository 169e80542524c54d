"""metadata.json's one rule for fields of other releases, and the typed records behind it."""

from __future__ import annotations

import json

import pytest

from movierec_common.artifact import (
    FORMAT_VERSION,
    ArtifactError,
    DatasetFacts,
    Distribution,
    FileEntry,
    VersionMetadata,
)
from trainer_service.kind_settings import BlendSettings, RecencyRule, SequentialSettings


def _text(record: dict) -> str:
    return json.dumps({"format_version": FORMAT_VERSION, **record})


def test_a_full_record_round_trips_through_its_json():
    written = VersionMetadata(
        model_kind="ease", job_id="job-1", created_at="2024-05-01T12:00:00+00:00",
        hyperparameters={"epochs": 30, "learning_rate": 0.003}, seed=42,
        dataset=DatasetFacts(source="ml-100k", fingerprint="abc", num_users=943, num_items=1682, num_ratings=100_000),
        metrics={"recall_at_10": 0.25}, baseline_metrics={"popularity": {"recall_at_10": 0.12}},
        loss_history=(2.5, 2.0), validation_history=({"recall_at_10": 0.2},),
        distribution=Distribution(engine="ray_train", workers=2, num_replicas_in_sync=2, ray_address="local"),
        query_encoder={"parts": [{"kind": "pooled", "width": 4}]}, retrieval={"backend": "exact"},
        files={"saved_model.pb": FileEntry(size=10, sha256="00")})
    read = VersionMetadata.from_text(written.to_text())
    assert read == written
    assert read.hyperparameters["epochs"] == 30 and isinstance(read.hyperparameters["epochs"], int)
    assert read.created_at_seconds == 1714564800.0


def test_an_old_version_lacking_fields_reads_with_the_declared_defaults():
    read = VersionMetadata.from_text(_text({"model_kind": "two_tower", "metrics": {"recall_at_10": 0.2}}))
    assert read.model_kind == "two_tower" and read.metrics == {"recall_at_10": 0.2}
    assert read.query_encoder is None and read.retrieval is None and read.files == {}
    assert read.dataset == DatasetFacts() and read.distribution == Distribution() and read.history_order == ""
    assert read.created_at_seconds is None


def test_a_newer_writers_fields_are_kept_written_back_and_otherwise_ignored():
    raw = {"model_kind": "ease", "feedback_watermark": 1234, "hidden": {"movies": [1, 2]}}
    read = VersionMetadata.from_text(_text(raw))
    assert read.extra == {"feedback_watermark": 1234, "hidden": {"movies": [1, 2]}}
    again = json.loads(read.to_text())
    assert again["feedback_watermark"] == 1234 and again["hidden"] == {"movies": [1, 2]}
    assert again["model_kind"] == "ease"


@pytest.mark.parametrize("record, message", [
    ({"model_kind": 7}, "'model_kind' is not a str"),
    ({"seed": "42"}, "'seed' is not a number"),
    ({"seed": 4.5}, "'seed' is not a whole number"),
    ({"metrics": [0.1]}, "'metrics' is not an object"),
    ({"loss_history": {"a": 1}}, "'loss_history' is not a list"),
    ({"dataset": {"num_users": "many"}}, "'dataset' 'num_users' is not a number"),
    ({"dataset": {"rows": 3}}, "'dataset' has no field rows"),  # inside a part, an unknown field is refused
    ({"files": {"a.pb": {"size": 3}}}, "'sha256' is missing"),
    ({"refit": {"enabled": "yes"}}, "'enabled' is not a bool"),
])
def test_a_known_field_of_the_wrong_shape_refuses_the_version(record, message):
    with pytest.raises(ArtifactError, match=message):
        VersionMetadata.from_text(_text(record))


@pytest.mark.parametrize("raw", ["{not json", "[]", json.dumps({"format_version": FORMAT_VERSION + 1})])
def test_what_is_not_a_record_of_this_format_is_refused(raw):
    with pytest.raises(ArtifactError):
        VersionMetadata.from_text(raw)


def test_figures_that_are_not_numbers_are_dropped_not_refused():
    read = VersionMetadata.from_text(_text({"metrics": {"recall_at_10": 0.2, "note": "n/a", "flag": True},
                                            "baseline_metrics": {"popularity": {"recall_at_10": 0.1, "x": None}}}))
    assert read.metrics == {"recall_at_10": 0.2}
    assert read.baseline_metrics == {"popularity": {"recall_at_10": 0.1}}


def test_kind_settings_refuse_what_they_do_not_know_and_keep_their_json_shape():
    chosen = SequentialSettings(l2_lambda=300.0, dlae_dropout=0.5, decay=5.0, floor=0.05, transition_decay=1.0,
                                transition_weight=2.0, visitor=None)
    assert chosen.to_json()["visitor"] is None  # written as metadata.json has always held it
    assert SequentialSettings.from_json(chosen.to_json()) == chosen
    visitor = RecencyRule(3.0, 0.0, 1.0, 4.0)
    assert SequentialSettings.from_json({**chosen.to_json(), "visitor": visitor.to_json()}).visitor == visitor
    blend = BlendSettings(epochs=3, l2_lambda=150.0, dlae_dropout=0.67, blend_weight=0.3, scales=(1.5, 0.5))
    assert BlendSettings.from_json(json.loads(json.dumps(blend.to_json()))) == blend
    with pytest.raises(ValueError, match="has no field colour"):
        BlendSettings.from_json({**blend.to_json(), "colour": 1})
    with pytest.raises(ValueError, match="'scales' is not a list of 2"):
        BlendSettings.from_json({**blend.to_json(), "scales": [1.0]})
    with pytest.raises(ValueError, match="'epochs' is missing"):
        BlendSettings.from_json({k: v for k, v in blend.to_json().items() if k != "epochs"})
