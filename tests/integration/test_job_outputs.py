"""What a finished job leaves besides the version it serves: its TensorBoard
run, read back from the event files, and the settings validation chose,
recorded in metadata.json.

Two real jobs on one trainer: ease_blend (a neural part with epochs, a
refit, and every setting chosen on validation) and dlae (closed form: no
epochs, no loss).
"""

from __future__ import annotations

import json

import pytest

from clients import TrainerClient
from movierec_common.tfenv import tensorflow
from tests.datagen import write_grouplens_files
from tests.servers import start_trainer
from trainer_service.closed_form_kinds import BLEND_GRID, DLAE_DROPOUTS, DLAE_LAMBDAS

DATA = dict(ratings_path="ratings.data", items_path="items.item", holdout_size=2)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("outputs")
    data_root = write_grouplens_files(base / "data")
    model_root = base / "models"
    trainer = start_trainer(model_root, base, "--data-root", str(data_root))
    try:
        with TrainerClient(trainer.address, timeout=30) as tc:
            ids = {"ease_blend": tc.train("ease_blend", epochs=2, **DATA).id, "dlae": tc.train("dlae", **DATA).id}
            jobs = {kind: tc.wait_for_job(job_id, timeout=300) for kind, job_id in ids.items()}
    finally:
        trainer.terminate()
    for job in jobs.values():
        assert job.state == "SUCCEEDED" and job.published, job.error or job.not_published_reason
    metadata = {kind: json.loads((model_root / str(job.model_version) / "metadata.json").read_text())
                for kind, job in jobs.items()}
    return {"jobs": jobs, "metadata": metadata, "runs": model_root / ".runs"}


def _read_run(folder) -> dict:
    """Every value in a run folder's own event files: {tag: [(step, value)]}, hparams plugin data under "hparams"."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    tf = tensorflow()
    values: dict = {"hparams": {}}
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event files in {folder}"
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    values["hparams"][data.WhichOneof("data")] = getattr(data, data.WhichOneof("data"))
                    continue
                array = tf.make_ndarray(value.tensor)
                item = array.item().decode() if array.dtype == object else float(array)
                values.setdefault(value.tag, []).append((event.step, item))
    return values


def _check_common(run: dict, job, metadata: dict, kind: str) -> None:
    start = run["hparams"]["session_start_info"]
    assert start.group_name == job.id
    assert start.hparams["model_kind"].string_value == kind
    assert {"epochs", "learning_rate", "l2_lambda", "blend_weight", "holdout", "seed", "refit"} <= set(start.hparams)
    assert start.hparams["epochs"].number_value == metadata["hyperparameters"]["epochs"]
    assert run["hparams"]["session_end_info"].status == 1  # STATUS_SUCCESS
    final = {tag[len("final/"):]: value for tag, points in run.items() if tag.startswith("final/")
             for _, value in points}
    assert final.keys() == job.metrics.keys()
    for name, value in job.metrics.items():
        assert final[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name
    assert "neighbourhood_recall_at_10" in job.baseline_metrics
    for name, value in job.baseline_metrics.items():
        tag = f"neighbourhood/{name[len('neighbourhood_'):]}" if name.startswith("neighbourhood_") \
            else f"popularity/{name}"
        assert run[tag][-1][1] == pytest.approx(value, rel=1e-6, abs=1e-6), name
    for name, value in metadata["settings"].items():
        if isinstance(value, float):
            assert run[f"settings/{name}"][-1][1] == pytest.approx(value, rel=1e-6), name
    assert run["job/outcome"][-1][1] == f"published as version {job.model_version}"
    validation = [value for _, value in run["validation/recall_at_10"]]
    assert validation == pytest.approx([v["recall_at_10"] for v in metadata["validation_history"]], rel=1e-6)


def test_tensorboard_run_of_a_job_with_epochs(finished):
    job, metadata = finished["jobs"]["ease_blend"], finished["metadata"]["ease_blend"]
    run = _read_run(finished["runs"] / job.id)
    assert len(job.loss_history) == job.metrics["epochs_run"] >= 2
    assert [step for step, _ in run["train/loss"]] == list(range(1, len(job.loss_history) + 1))
    assert [loss for _, loss in run["train/loss"]] == pytest.approx(job.loss_history, rel=1e-6)
    _check_common(run, job, metadata, "ease_blend")
    # The refit's own run: its epochs restart at 1 on all ratings, as many as evaluation chose.
    refit = _read_run(finished["runs"] / job.id / "refit")
    assert [step for step, _ in refit["train/loss"]] == list(range(1, metadata["refit"]["settings"]["epochs"] + 1))
    assert refit["hparams"] == {}


def test_tensorboard_run_of_a_closed_form_job(finished):
    job, metadata = finished["jobs"]["dlae"], finished["metadata"]["dlae"]
    run = _read_run(finished["runs"] / job.id)
    assert "train/loss" not in run and job.loss_history == []  # no loss to plot, not a loss of 0
    assert [step for step, _ in run["validation/recall_at_10"]] == [1]
    _check_common(run, job, metadata, "dlae")
    assert not (finished["runs"] / job.id / "refit").exists()


def _first_best(candidates: list[dict]) -> dict:
    return max(candidates, key=lambda c: (c["recall_at_10"], c["ndcg_at_10"]))


def test_metadata_records_the_settings_validation_chose(finished):
    dlae, blend = finished["metadata"]["dlae"], finished["metadata"]["ease_blend"]
    # Requested: 0 = choose on validation. Chosen: the best candidate, recorded, and what the refit used.
    assert dlae["hyperparameters"]["l2_lambda"] == 0
    best = _first_best(dlae["selection"]["candidates"])
    assert len(dlae["selection"]["candidates"]) == len(DLAE_LAMBDAS) * len(DLAE_DROPOUTS)
    assert dlae["settings"] == {"l2_lambda": best["l2_lambda"], "dlae_dropout": best["dropout"]}
    assert dlae["refit"]["settings"] == dlae["settings"]

    assert blend["hyperparameters"]["l2_lambda"] == 0 and blend["hyperparameters"]["blend_weight"] == 0
    settings = blend["settings"]
    assert set(settings) == {"epochs", "l2_lambda", "dlae_dropout", "blend_weight", "scales"}
    assert settings["blend_weight"] == _first_best(blend["selection"]["blend_candidates"])["blend_weight"]
    assert [c["blend_weight"] for c in blend["selection"]["blend_candidates"]] == list(BLEND_GRID)
    best = _first_best(blend["selection"]["dlae_candidates"])
    assert (settings["l2_lambda"], settings["dlae_dropout"]) == (best["l2_lambda"], best["dropout"])
    assert settings["epochs"] == finished["jobs"]["ease_blend"].metrics["best_epoch"]
    assert len(settings["scales"]) == 2 and min(settings["scales"]) > 0
    assert blend["refit"]["settings"] == settings
    chosen = _first_best(blend["selection"]["blend_candidates"])["recall_at_10"]
    assert blend["metrics"]["validation_recall_at_10"] == pytest.approx(chosen)  # the job reports the blend chosen
