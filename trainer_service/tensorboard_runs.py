"""TensorBoard event files for every training job: ``tensorboard --logdir <model root>/.runs``.

Written by the trainer process from the job's own progress reports, not by a
Keras callback inside training: an in-process job and a Ray job (whose
epochs reach the driver from rank 0 through its channel) then write the same
run, and the kinds that train in closed form, which have no epochs, still
get their hyperparameters and their metrics.

One run folder per job, ``<runs dir>/<job id>/``:

* the hparams plugin's session start (``tensorboard.plugins.hparams.api``):
  the model kind, every resolved hyperparameter, the holdout, seed, dataset,
  workers and refit, so the HPARAMS tab compares jobs side by side;
* ``train/loss`` per epoch (kinds with a loss) and ``validation/*`` per
  epoch (kinds that validate per epoch; a closed-form kind's one validation
  pass is step 1);
* at the end, ``settings/*`` (what validation chose: epochs, lambda,
  dropout, blend weight...), ``final/*`` (the job's metrics: held-out
  Recall/NDCG/precision, validation Recall@10, timings), ``popularity/*``
  (the baseline on the same holdout), the outcome as text, and the hparams
  session end (success, or failure for a job that ended without a result).

A refit's epochs go to ``<job id>/refit/``: its loss is on all ratings, a
different curve from the evaluated run's, and its epochs restart at 1, so on
the same tags it would overwrite the evaluated run's points; as a subfolder
TensorBoard shows it as its own run, and the hparams view counts it under the
same trial. Closed-form refits have no epochs and write nothing there.

An object-store root (``s3://``): TensorFlow 2.21 has no s3 file system, so
the run is written to a local temp folder and uploaded (``model_root.upload_file``)
every ``UPLOAD_SECONDS`` while it trains and once at the end.

Best effort by design: a failure to write turns the job's run off and an
upload failure is retried at the next upload; either logs a warning, and
neither ever fails the job.

Retention: run folders are small (a few kB per job) and are not deleted with
versions; prune ``.runs`` by hand or point ``--tensorboard-dir`` elsewhere.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import cache
from types import SimpleNamespace

from movierec.v1.vocabulary import NEIGHBOURHOOD_PREFIX
from movierec_common.logs import event
from movierec_common.model_root import RootUnreachable, is_local, join, local_path, upload_file
from movierec_common.tfenv import tensorflow

log = logging.getLogger(__name__)

RUNS_DIR = ".runs"
REFIT_RUN = "refit"
# How often a run on an object store is uploaded while its job trains.
UPLOAD_SECONDS = 30.0


@cache
def _tb() -> SimpleNamespace:
    """TensorBoard's summary and event-file modules, imported on first use.

    Some of them import TensorFlow (and its Keras), which must happen through
    tfenv so that the environment is set first.
    """
    tensorflow()
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import api, api_pb2
    from tensorboard.plugins.hparams import summary as hparams_summary
    from tensorboard.plugins.scalar.summary_v2 import scalar_pb
    from tensorboard.plugins.text.summary_v2 import text_pb
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    def session_end_pb(status):  # built as TensorFlow's Summary message; the event takes TensorBoard's
        return summary_pb2.Summary.FromString(hparams_summary.session_end_pb(status).SerializeToString())

    return SimpleNamespace(Event=event_pb2.Event, Summary=summary_pb2.Summary, hparams_pb=api.hparams_pb,
                           session_end_pb=session_end_pb, SUCCESS=api_pb2.STATUS_SUCCESS,
                           FAILURE=api_pb2.STATUS_FAILURE, scalar_pb=scalar_pb, text_pb=text_pb,
                           EventFileWriter=EventFileWriter)


def runs_dir(model_root: str, tensorboard_dir: str | None) -> str:
    """Where jobs' run folders go: ``--tensorboard-dir``, else ``<model root>/.runs``."""
    return tensorboard_dir or join(model_root, RUNS_DIR)


def _numbers(values: Mapping, prefix: str) -> dict[str, float]:
    """The finite numbers in a settings mapping, nested ones (a list, the visitors' rule) by path."""
    found: dict[str, float] = {}
    for name, value in values.items():
        key = f"{prefix}/{name}"
        if isinstance(value, Mapping):
            found.update(_numbers(value, key))
        elif isinstance(value, (list, tuple)):
            found.update(_numbers({str(i): v for i, v in enumerate(value)}, key))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            found[key] = float(value)
    return found


class JobRun:
    """One job's TensorBoard run; every method is safe to call whatever happened before."""

    def __init__(self, base: str, job_id: str, hparams: Mapping[str, bool | int | float | str],
                 *, started: float | None = None, upload_seconds: float = UPLOAD_SECONDS):
        self.location = join(base, job_id)
        self._job_id = job_id
        self._remote = not is_local(base)
        self._upload_seconds = upload_seconds
        self._uploaded_at = time.monotonic()
        self._writers: dict = {}
        self._closed = False
        self._local = ""
        self._enabled = True
        self._guard("open", lambda: self._open(hparams, started))

    # -- what the job reports ------------------------------------------------

    def epoch(self, epoch: int, loss: float | None, validation: Mapping[str, float], run: str = "") -> None:
        """One epoch: its mean training loss (None: the kind has none) and validation metrics."""
        def write():
            values = {} if loss is None else {"train/loss": loss}
            values.update({f"validation/{name}": value for name, value in validation.items()})
            self._scalars(run, values, epoch)
        if self._guard("epoch", write) and self._remote \
                and time.monotonic() - self._uploaded_at >= self._upload_seconds:
            self._upload()

    def settings(self, settings: Mapping, step: int) -> None:
        self._guard("settings", lambda: self._scalars("", _numbers(settings, "settings"), step))

    def finish(self, metrics: Mapping[str, float], baseline: Mapping[str, float], outcome: str, step: int) -> None:
        """The job's result: its metrics, the baselines' (popularity's as they are, neighbourhood popularity's
        prefixed ``neighbourhood_`` in the job, under ``neighbourhood/`` here), what happened, and the hparams
        session's end."""
        prefix = NEIGHBOURHOOD_PREFIX
        popularity = {name: value for name, value in baseline.items() if not name.startswith(prefix)}
        neighbourhood = {name[len(prefix):]: value for name, value in baseline.items() if name.startswith(prefix)}

        def write():
            self._scalars("", {**_numbers(metrics, "final"), **_numbers(popularity, "popularity"),
                               **_numbers(neighbourhood, "neighbourhood")}, step)
            self._text("job/outcome", outcome, step)
            self._add("", _tb().session_end_pb(_tb().SUCCESS), step)
        self._guard("finish", write)

    def failed(self, reason: str) -> None:
        """The job ended without a result (failed or cancelled): say so, and end the session as a failure."""
        def write():
            self._text("job/outcome", reason, 0)
            self._add("", _tb().session_end_pb(_tb().FAILURE), 0)
        self._guard("failed", write)

    def close(self) -> None:
        """Flushes and closes every writer; on an object store, uploads the run and removes the local copy."""
        if self._closed:
            return
        def close_writers() -> None:
            for writer in self._writers.values():
                writer.close()

        self._guard("close", close_writers)
        self._closed = True
        if self._remote and self._local:
            if self._enabled:
                self._upload(final=True)
            shutil.rmtree(self._local, ignore_errors=True)

    # -- internals -------------------------------------------------------------

    def _open(self, hparams, started) -> None:
        if self._remote:
            self._local = tempfile.mkdtemp(prefix=f"movierec-run-{self._job_id}-")
        else:
            self._local = local_path(self.location)
        self._add("", _tb().hparams_pb(dict(hparams), trial_id=self._job_id, start_time_secs=started), 0)

    def _writer(self, run: str):
        if run not in self._writers:
            self._writers[run] = _tb().EventFileWriter(os.path.join(self._local, run) if run else self._local)
        return self._writers[run]

    def _add(self, run: str, summary, step: int) -> None:
        writer = self._writer(run)
        writer.add_event(_tb().Event(wall_time=time.time(), step=int(step), summary=summary))
        writer.flush()  # someone may be following the run live

    def _scalars(self, run: str, values: Mapping[str, float], step: int) -> None:
        summary = _tb().Summary()
        for tag, value in values.items():
            summary.value.extend(_tb().scalar_pb(tag, float(value)).value)
        if summary.value:
            self._add(run, summary, step)

    def _text(self, tag: str, text: str, step: int) -> None:
        self._add("", _tb().text_pb(tag, text), step)

    def _active(self) -> bool:
        return self._enabled and not self._closed

    def _upload(self, final: bool = False) -> None:
        """Copies the local run folder to the object store; a failure waits for the next upload."""
        self._uploaded_at = time.monotonic()
        try:
            for writer in self._writers.values():
                if not final:
                    writer.flush()
            for folder, _dirs, names in os.walk(self._local):
                relative = os.path.relpath(folder, self._local)
                for name in names:
                    destination = self.location if relative == "." else join(self.location, relative)
                    upload_file(os.path.join(folder, name), join(destination, name))
        except RootUnreachable as exc:  # the job goes on
            event(log, "tensorboard upload failed", logging.WARNING, job_id=self._job_id, location=self.location,
                  error=f"{type(exc).__name__}: {exc}", final=final)

    def _guard(self, what: str, action: Callable[[], None]) -> bool:
        """Runs ``action``; on failure warns once and turns this run off. Returns whether it is still on."""
        if not self._active():
            return False
        try:
            action()
            return True
        except Exception as exc:
            event(log, "tensorboard run disabled: writing it failed", logging.WARNING, job_id=self._job_id,
                  location=self.location, step=what, error=f"{type(exc).__name__}: {exc}")
            self._enabled = False
            return False
