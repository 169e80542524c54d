"""The structured log line: one JSON object per record, an exception's whole traceback kept."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# A server's logging as configured at start-up, in a process of its own (configure() replaces the
# root handlers, which pytest's capture relies on). Three frames of our own and a chained cause.
PROGRAM = textwrap.dedent("""
    import logging
    from movierec_common import logs

    logs.configure("info")
    log = logging.getLogger("movierec.test")

    def parse_the_file(path):
        raise KeyError(path)

    def load_the_dataset(path):
        try:
            parse_the_file(path)
        except KeyError as exc:
            raise ValueError("the dataset could not be loaded") from exc

    def run_the_job():
        load_the_dataset("ratings.csv")

    try:
        run_the_job()
    except ValueError:
        log.exception("job failed")
        logs.event(log, "job failed again", logging.WARNING, exc_info=True, job_id="j-1")
    logs.event(log, "job started", job_id="j-2", epochs=3)
    log.debug("not shown at info")
    logging.getLogger("tensorflow").info("library chatter is not shown")
    logging.getLogger("tensorflow").warning("a library's warning is")
""")


def test_a_logged_exception_keeps_every_frame_and_its_cause():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object

    assert [r["event"] for r in records] == ["job failed", "job failed again", "job started",
                                             "a library's warning is"]
    for record in records[:2]:
        assert record["error"] == "ValueError: the dataset could not be loaded"
        traceback = record["traceback"]
        for frame in ("<module>", "run_the_job", "load_the_dataset", "parse_the_file"):
            assert f", in {frame}\n" in traceback, (frame, traceback)
        assert "KeyError: 'ratings.csv'" in traceback
        assert "The above exception was the direct cause of the following exception" in traceback
        assert traceback.rstrip().endswith(record["error"])
    assert records[0]["level"] == "error" and records[1]["level"] == "warning"
    assert records[1]["job_id"] == "j-1" and records[1]["logger"] == "movierec.test"
    assert records[2] == {**records[2], "level": "info", "job_id": "j-2", "epochs": 3}
    assert "traceback" not in records[2] and "error" not in records[2]
