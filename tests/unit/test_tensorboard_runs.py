"""A job's TensorBoard run on an object store, and a run that cannot be
written: the job's side of either must never fail (the full run of a real
job is read back in tests/integration/test_job_outputs.py)."""

from __future__ import annotations

import logging

from movierec_common import model_root
from movierec_common.tfenv import tensorflow
from tests.s3 import s3_server
from trainer_service.tensorboard_runs import JobRun


def _losses(folder) -> list[tuple[int, float]]:
    tf = tensorflow()
    found = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            found += [(event.step, float(tf.make_ndarray(v.tensor))) for v in event.summary.value
                      if v.tag == "train/loss"]
    return found


def test_a_run_on_an_object_store_is_uploaded_while_it_trains_and_survives_an_outage(tmp_path, caplog):
    with s3_server("runs") as server:
        run = JobRun("s3://runs/root/.runs", "job-1", {"model_kind": "two_tower", "epochs": 3},
                     upload_seconds=0.0)
        run.epoch(1, 0.75, {"recall_at_10": 0.25})
        uploaded = model_root.list_names("s3://runs/root/.runs/job-1")
        assert any(name.startswith("events.out.tfevents.") for name in uploaded)  # followed live, not only at the end

        server.stop()  # an outage: the upload after this epoch fails, and only warns
        with caplog.at_level(logging.WARNING, logger="trainer_service.tensorboard_runs"):
            run.epoch(2, 0.5, {"recall_at_10": 0.5})
        assert "tensorboard upload failed" in caplog.text
        server.start()
        run.epoch(1, 0.625, {}, run="refit")
        run.close()

        local = tmp_path / "copy"
        model_root.download("s3://runs/root/.runs/job-1", str(local))
    assert _losses(local) == [(1, 0.75), (2, 0.5)]
    assert _losses(local / "refit") == [(1, 0.625)]


def test_a_run_that_cannot_be_written_turns_itself_off(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs folder should be")
    with caplog.at_level(logging.WARNING, logger="trainer_service.tensorboard_runs"):
        run = JobRun(str(blocker / ".runs"), "job-2", {"model_kind": "ease"})
        run.epoch(1, None, {"recall_at_10": 0.5})
        run.settings({"l2_lambda": 300.0}, 1)
        run.finish({"recall_at_10": 0.5}, {}, "published as version 1", 1)
        run.close()
    assert caplog.text.count("tensorboard run disabled") == 1  # one warning, then silence
    assert blocker.read_text() == "a file where the runs folder should be"
