"""Freshness pays, through the services: MovieLens 100K replayed in time order (issue 19's first target).

All 100,000 ratings are ordered by time (ties by file position). The first
half is the base data: written as a u.data-layout ratings file beside a copy
of u.item in a data root, and trained into a version by a real trainer
(``TrainRequest.dataset`` with ``ratings_path``/``items_path``, the quality
gate disabled). The second half is replayed in time order: before every
``--sample-every``-th interaction (the same sample in every setting) the
replay asks a real recommender ``Recommend(user, k=10)`` (``exclude_seen``
left at its default) and counts a hit when that interaction's movie is in the
top 10. Three settings per kind, each on a recommender of its own started on
the same model root, so all three start from the **same base version**:

* **frozen**: a recommender with ``--events none``, and no interaction is
  sent. Such a recommender has no fresh histories at all, so every answer is
  the base version's alone (the same as sending them to a store it does not
  follow, without the writes).
* **fresh**: a recommender on an event store of its own (one the trainer
  does not read, so nothing is retrained); every interaction of the second
  half goes through ``RecordInteractions`` in time order, batched between
  samples, and the recommender answers with the fresh histories.
* **fresh + retrain**: as fresh, on the trainer's own event store, the
  trainer running ``--retrain-after-interactions N`` (5,000). Once the store
  has N interactions past the last policy job's watermark the replay stops
  sending, waits for the job the policy queues (``ListJobs``, trigger
  ``retrain_after_interactions``), for it to finish, and for the recommender
  to serve its version, and only then goes on: the figure measures the model,
  not the queue. The policy's jobs copy the base job's settings, quality gate
  (disabled) included; a job that did not publish is reported.

Every sampled answer's model version is checked against the one the setting
expects (the base version; in the retrain setting, the last version waited
for), and every batch's acknowledgement is counted.

    python benchmarks/replay.py [--kinds ease,sequential,two_tower] [--sample-every 5] [--tiny]

It prints a table per kind and the targets (fresh >= 2.5x frozen, fresh +
retrain >= 1.05x fresh, for every kind but ``two_tower``, which is reported)
and writes JSON to ``--out`` (default ``benchmarks/results/replay.json``).
``--tiny`` (CI): the users with ids up to 60, the first 400 interactions of
their second half, every 2nd sampled, a retrain every 150, ``ease`` only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repo importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.replay_servers import TOKEN, KindServers  # noqa: E402
from benchmarks.report import target_lines, work_folder  # noqa: E402

DEFAULT_MOVIELENS = REPO_ROOT.parent / "shared" / "data" / "ml-100k"
SETTINGS = ("frozen", "fresh", "retrain")
LABELS = {"frozen": "frozen", "fresh": "fresh", "retrain": "fresh + retrain"}
TARGET_FRESH_OVER_FROZEN = 2.5
TARGET_RETRAIN_OVER_FRESH = 1.05
REPORTED_ONLY = ("two_tower",)  # its figures are reported, not judged
K = 10
MAX_BATCH = 1000  # RecordInteractions takes at most this many


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens-dir", default=os.environ.get("MOVIELENS_DIR", str(DEFAULT_MOVIELENS)))
    parser.add_argument("--kinds", default=None,
                        help="model kinds, comma separated (default: ease,sequential,two_tower; --tiny: ease)")
    parser.add_argument("--sample-every", type=int, default=5,
                        help="ask Recommend before every n-th interaction of the second half")
    parser.add_argument("--retrain-after", type=int, default=5000,
                        help="the trainer's --retrain-after-interactions in the retrain setting")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="which of frozen,fresh,retrain to run")
    parser.add_argument("--users", type=int, default=0, help="only users with ids up to this (0: all)")
    parser.add_argument("--replay-limit", type=int, default=0,
                        help="replay only the first N interactions of the second half (0: all of it)")
    parser.add_argument("--epochs", type=int, default=None, help="the jobs' epochs (default: each kind's)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--job-timeout", type=float, default=1800.0, help="seconds to wait for one training job")
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "replay.json"))
    parser.add_argument("--work-dir", default=None, help="keep the data, model roots, stores and logs here "
                                                         "(default: a temp folder, removed)")
    parser.add_argument("--tiny", action="store_true",
                        help="users 1-60, 400 interactions replayed, every 2nd sampled, retrain every 150, ease")
    args = parser.parse_args(argv)
    if args.tiny:
        args.users = args.users or 60
        args.replay_limit = args.replay_limit or 400
        args.sample_every = min(args.sample_every, 2)
        args.retrain_after = min(args.retrain_after, 150)
    if args.kinds is None:
        args.kinds = "ease" if args.tiny else "ease,sequential,two_tower"
    args.kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = set(args.settings) - set(SETTINGS)
    if unknown or not args.settings:
        parser.error(f"--settings: choose from {', '.join(SETTINGS)}")
    if args.sample_every < 1 or args.retrain_after < 1:
        parser.error("--sample-every and --retrain-after must be positive")
    return args


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

@dataclass
class Timeline:
    """The ratings in time order (ties by file position), split into the base data and the replayed half."""

    users: np.ndarray
    movies: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    file_rows: np.ndarray  # each rating's line in u.data (0-based): its event id
    base: int  # the first ``base`` are the base data
    end: int  # ratings[base:end] are replayed

    @property
    def replayed(self) -> int:
        return self.end - self.base


def load_timeline(movielens_dir: Path, users: int = 0, replay_limit: int = 0) -> Timeline:
    raw = np.loadtxt(movielens_dir / "u.data", dtype=np.int64, ndmin=2)
    rows = np.arange(len(raw))
    if users:
        keep = raw[:, 0] <= users
        raw, rows = raw[keep], rows[keep]
    order = np.argsort(raw[:, 3], kind="stable")  # by time; a stable sort keeps file order within a second
    raw, rows = raw[order], rows[order]
    base = len(raw) // 2
    end = min(len(raw), base + replay_limit) if replay_limit else len(raw)
    return Timeline(users=raw[:, 0], movies=raw[:, 1], ratings=raw[:, 2].astype(np.float64), timestamps=raw[:, 3],
                    file_rows=rows, base=base, end=end)


def write_data_root(timeline: Timeline, movielens_dir: Path, data_root: Path) -> tuple[str, str]:
    """The base half as ``base.data`` (u.data layout, time order) and a copy of u.item (and u.genre): derived
    files, in the work folder only."""
    data_root.mkdir(parents=True, exist_ok=True)
    b = timeline.base
    columns = np.stack([timeline.users[:b], timeline.movies[:b], timeline.ratings[:b].astype(np.int64),
                        timeline.timestamps[:b]], axis=1)
    np.savetxt(data_root / "base.data", columns, fmt="%d", delimiter="\t")
    for name in ("u.item", "u.genre"):
        if (movielens_dir / name).is_file():
            shutil.copyfile(movielens_dir / name, data_root / name)
    return "base.data", "u.item"


def sample_positions(timeline: Timeline, every: int) -> np.ndarray:
    """The replayed interactions (offsets into the second half) asked about: every ``every``-th."""
    return np.arange(every - 1, timeline.replayed, every, dtype=np.int64)


# ----------------------------------------------------------------------------
# The replay
# ----------------------------------------------------------------------------

class Retrainer:
    """The retrain setting's waits: once the store holds ``after`` interactions past the last policy job's
    watermark, wait for the job the policy queues, for it to end, and for the recommender to serve it."""

    def __init__(self, tc, rc, after: int, job_timeout: float):
        self.tc, self.rc, self.after, self.job_timeout = tc, rc, after, job_timeout
        self.covered = 0
        self.seen_jobs = {job.id for job in tc.list_jobs(limit=100)}
        self.retrains: list[dict] = []

    def after_batch(self, watermark: int, expected: int) -> int:
        """Called after each acknowledged batch; returns the version expected to answer from now on."""
        if watermark - self.covered < self.after:
            return expected
        started = time.monotonic()
        job = self._policy_job(started)
        self.seen_jobs.add(job.id)
        queued = time.monotonic()
        job = self.tc.wait_for_job(job.id, timeout=self.job_timeout)
        trained = time.monotonic()
        self.covered = job.interactions_watermark or watermark
        record = {"job": job.id, "trigger": job.trigger, "store_watermark": watermark,
                  "job_watermark": job.interactions_watermark, "state": job.state, "published": job.published,
                  "version": job.model_version, "reason": job.not_published_reason or job.error,
                  "train_seconds": round(job.metrics.get("train_seconds", 0.0), 2),
                  "wait_for_queue_s": round(queued - started, 2), "wait_for_job_s": round(trained - queued, 2)}
        if job.published and job.model_version:
            KindServers.wait_served(self.rc, job.model_version, timeout=300)
            expected = job.model_version
        record["wait_for_served_s"] = round(time.monotonic() - trained, 2)
        record["waited_s"] = round(time.monotonic() - started, 2)
        self.retrains.append(record)
        print(f"    retrain at #{watermark:,}: job {job.id[:8]} {job.state.lower()}, version {job.model_version} "
              f"served after {record['waited_s']} s (training {record['wait_for_job_s']} s)", flush=True)
        return expected

    def _policy_job(self, started: float):
        while time.monotonic() - started < 120:
            for job in self.tc.list_jobs(limit=20):
                if job.id not in self.seen_jobs and job.trigger == "retrain_after_interactions":
                    return job
            time.sleep(0.1)
        raise RuntimeError(f"the retrain policy queued no job within 120 s of the store reaching "
                           f"{self.covered + self.after:,} interactions")

def replay(rc, timeline: Timeline, samples: np.ndarray, *, send: bool, expected: int,
           retrainer: Retrainer | None = None) -> dict:
    """One setting: batches sent between samples (when ``send``), a Recommend before each sampled one."""
    from clients import Interaction

    def batch(lo: int, hi: int) -> list:
        return [Interaction(str(timeline.users[i]), int(timeline.movies[i]), rating=float(timeline.ratings[i]),
                            occurred_at=dt.datetime.fromtimestamp(int(timeline.timestamps[i]), dt.UTC),
                            event_id=f"ml-100k-{timeline.file_rows[i]}")
                for i in range(timeline.base + lo, timeline.base + hi)]

    counts = {"sent": 0, "stored": 0, "duplicates": 0, "calls": 0}
    last_watermark = 0

    def send_range(lo: int, hi: int) -> None:
        nonlocal last_watermark, expected
        for start in range(lo, hi, MAX_BATCH):
            items = batch(start, min(hi, start + MAX_BATCH))
            recorded = rc.record(items)
            counts["sent"] += len(items)
            counts["stored"] += recorded.stored
            counts["duplicates"] += recorded.duplicates
            counts["calls"] += 1
            last_watermark = recorded.watermark
        if retrainer is not None and hi > lo:
            expected = retrainer.after_batch(last_watermark, expected)

    started = time.monotonic()
    hits = cold = 0
    wrong_version: list[dict] = []  # the first few answers by a version the setting did not expect
    unexpected = 0
    versions: dict[int, int] = {}
    done = 0
    flags = np.zeros(len(samples), dtype=bool)  # which samples were hits, to compare settings sample by sample
    for number, offset in enumerate(samples.tolist()):
        if send:
            send_range(done, offset)
        done = offset
        i = timeline.base + offset
        answer = rc.recommend(str(timeline.users[i]), k=K)
        versions[answer.model_version] = versions.get(answer.model_version, 0) + 1
        if answer.model_version != expected:
            unexpected += 1
            if len(wrong_version) < 20:
                wrong_version.append({"sample": offset, "version": answer.model_version, "expected": expected})
        flags[number] = int(timeline.movies[i]) in {item.movie_id for item in answer.items}
        hits += int(flags[number])
        cold += answer.cold_start
    if send:
        send_range(done, timeline.replayed)  # the rest, so that every interaction of the half is acknowledged
    n = len(samples)
    rate = hits / n if n else 0.0
    return {"samples": n, "hits": hits, "hit_at_10": rate,
            "stderr": math.sqrt(rate * (1 - rate) / n) if n else None, "cold_start_answers": cold,
            "interactions_sent": counts["sent"], "acknowledged": counts["stored"] + counts["duplicates"],
            "stored": counts["stored"], "record_calls": counts["calls"], "store_watermark": last_watermark,
            "versions": {str(v): c for v, c in sorted(versions.items())},
            "answers_by_unexpected_version": unexpected, "unexpected_examples": wrong_version,
            "wall_seconds": round(time.monotonic() - started, 1), "_hit_flags": flags}


def run_kind(args, kind: str, timeline: Timeline, samples: np.ndarray, work: Path, data_root: Path,
             files: tuple[str, str]) -> dict:
    from clients import RecommenderClient, TrainerClient

    kind_work = work / kind
    servers = KindServers(kind_work, data_root, args.retrain_after, args.settings)
    out: dict[str, Any] = {"kind": kind, "settings": {}}
    try:
        started = time.monotonic()
        servers.start()
        out["servers_start_s"] = round(time.monotonic() - started, 1)
        with TrainerClient(servers.trainer.target, timeout=30, token=TOKEN) as tc:
            job = tc.train(kind, ratings_path=files[0], items_path=files[1], seed=args.seed, epochs=args.epochs,
                           quality_gate_disabled=True)
            job = tc.wait_for_job(job.id, timeout=args.job_timeout)
            if not job.published or not job.model_version:
                raise RuntimeError(f"the base {kind} job did not publish: {job.state} "
                                   f"{job.error or job.not_published_reason}")
            base_version = job.model_version
            out["base"] = {"job": job.id, "version": base_version, "ratings": timeline.base,
                           "train_seconds": round(job.metrics.get("train_seconds", 0.0), 1),
                           "recall_at_10_heldout": round(job.metrics.get("recall_at_10", 0.0), 4),
                           "job_seconds": round(time.monotonic() - started - out["servers_start_s"], 1)}
            print(f"  {kind}: base version {base_version} trained on {timeline.base:,} ratings "
                  f"({out['base']['job_seconds']} s)", flush=True)
            for setting in args.settings:
                server = servers.recommenders[setting]
                with RecommenderClient(server.target, timeout=30, token=TOKEN) as rc:
                    servers.wait_served(rc, base_version)
                    t0 = time.monotonic()
                    retrainer = Retrainer(tc, rc, args.retrain_after, args.job_timeout) \
                        if setting == "retrain" else None
                    result = replay(rc, timeline, samples, send=setting != "frozen", expected=base_version,
                                    retrainer=retrainer)
                    status = rc.model_status()
                result["setting"] = setting
                result["retrains"] = retrainer.retrains if retrainer else []
                result["retrained_versions_served"] = sum(1 for r in result["retrains"] if r["published"])
                result["versions_served"] = len(result["versions"])
                result["wall_seconds"] = round(time.monotonic() - t0, 1)
                result["recommender"] = {"events": status.events_store, "fresh_interactions": status.fresh_interactions,
                                         "fresh_users": status.fresh_users, "online_judged": status.online_judged,
                                         "online_hit_rate": round(status.online_hit_rate, 4),
                                         "served_version": status.served_version}
                out["settings"][setting] = result
                print(f"  {kind} {LABELS[setting]}: hit@10 {result['hit_at_10']:.4f} ({result['hits']:,} of "
                      f"{result['samples']:,}), {result['wall_seconds']} s", flush=True)
                servers.stop_recommender(setting)  # its replica follows no later version for nothing
    finally:
        servers.stop()
    add_ratios(out)
    return out


def add_ratios(out: dict) -> None:
    """Each setting's ratios to frozen and to fresh, and a paired comparison with the setting before it (the
    same samples: hits only one of the two had, and McNemar's z, (b - c) / sqrt(b + c))."""
    settings = out["settings"]
    frozen = settings.get("frozen", {}).get("hit_at_10")
    fresh = settings.get("fresh", {}).get("hit_at_10")
    for result in settings.values():
        rate = result["hit_at_10"]
        result["ratio_to_frozen"] = rate / frozen if frozen else None
        result["ratio_to_fresh"] = rate / fresh if fresh else None
    for setting, before in (("fresh", "frozen"), ("retrain", "fresh")):
        if setting in settings and before in settings:
            mine, theirs = settings[setting]["_hit_flags"], settings[before]["_hit_flags"]
            gained, lost = int((mine & ~theirs).sum()), int((theirs & ~mine).sum())
            settings[setting]["paired_with_" + before] = {
                "hits_only_here": gained, f"hits_only_{before}": lost,
                "mcnemar_z": round((gained - lost) / math.sqrt(gained + lost), 2) if gained + lost else None}
    for result in settings.values():
        del result["_hit_flags"]


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------

def evaluate_targets(kinds: list[dict]) -> list[dict]:
    targets = []
    for out in kinds:
        settings, judged = out["settings"], out["kind"] not in REPORTED_ONLY
        checks = [("fresh", "frozen", TARGET_FRESH_OVER_FROZEN, "ratio_to_frozen"),
                  ("retrain", "fresh", TARGET_RETRAIN_OVER_FRESH, "ratio_to_fresh")]
        for setting, over, limit, key in checks:
            if setting in settings and over in settings:
                value = settings[setting][key]
                targets.append({"name": f"{out['kind']}: {LABELS[setting]} / {over} hit@10", "value": value,
                                "limit": f">= {limit}", "judged": judged,
                                "passed": value is not None and value >= limit})
    return targets


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def report_lines(report: dict) -> list[str]:
    lines: list[str] = []
    cfg = report["config"]
    for out in report["kinds"]:
        base = out["base"]
        lines += [f"{out['kind']}: base version {base['version']} on the first {base['ratings']:,} ratings by time "
                  f"(job {base['job_seconds']} s); {report['data']['replayed']:,} interactions replayed, "
                  f"Recommend(k=10) before 1 in {cfg['sample_every']}; retrain every {cfg['retrain_after']:,}",
                  "",
                  "| setting | samples | hits | hit@10 | ratio to frozen | ratio to fresh | versions served "
                  "| wall s |",
                  "|---|---|---|---|---|---|---|---|"]
        for setting, result in out["settings"].items():
            lines.append(f"| {LABELS[setting]} | {result['samples']:,} | {result['hits']:,} "
                         f"| {result['hit_at_10']:.4f} ± {result['stderr']:.4f} | {_ratio(result['ratio_to_frozen'])} "
                         f"| {_ratio(result['ratio_to_fresh'])} | {result['versions_served']} "
                         f"| {result['wall_seconds']:.0f} |")
        for setting, result in out["settings"].items():
            waits = [r["waited_s"] for r in result["retrains"]]
            paired = next((v for k, v in result.items() if k.startswith("paired_with_")), None)
            if paired:
                other = [v for k, v in paired.items() if k.startswith("hits_only_") and k != "hits_only_here"][0]
                extra_paired = (f", paired: {paired['hits_only_here']:,} hits only here vs {other:,} only in "
                                f"the setting before (McNemar z {paired['mcnemar_z']})")
            else:
                extra_paired = ""
            extra = extra_paired + (f"; {len(waits)} retrains ({result['retrained_versions_served']} served), waits "
                     f"{min(waits):.1f}-{max(waits):.1f} s" if waits else "")
            lines.append(f"  {LABELS[setting]}: {result['acknowledged']:,} of {result['interactions_sent']:,} "
                         f"interactions acknowledged in {result['record_calls']:,} calls, "
                         f"{result['cold_start_answers']:,} cold-start answers, "
                         f"{result['answers_by_unexpected_version']} answers by an unexpected version{extra}")
        lines.append("")
    return lines + target_lines(report["targets"], lambda value: "-" if value is None else f"{value:.3f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    movielens_dir = Path(args.movielens_dir)
    if not (movielens_dir / "u.data").is_file():
        raise SystemExit(f"MovieLens 100K not found at {movielens_dir}: set MOVIELENS_DIR or --movielens-dir")
    work = work_folder(args.work_dir, "movierec-replay-bench-")
    started = time.monotonic()
    load_before = os.getloadavg()
    try:
        timeline = load_timeline(movielens_dir, args.users, args.replay_limit)
        samples = sample_positions(timeline, args.sample_every)
        files = write_data_root(timeline, movielens_dir, work / "data")
        print(f"{timeline.base:,} base ratings, {timeline.replayed:,} replayed, {len(samples):,} sampled; "
              f"kinds {', '.join(args.kinds)}", flush=True)
        kinds = [run_kind(args, kind, timeline, samples, work, work / "data", files) for kind in args.kinds]
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    report: dict[str, Any] = {
        "benchmark": "replay", "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "work_dir")},
        "data": {"base": timeline.base, "replayed": timeline.replayed, "samples": len(samples),
                 "base_until": dt.datetime.fromtimestamp(int(timeline.timestamps[timeline.base - 1]),
                                                         dt.UTC).isoformat()},
        "kinds": kinds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "wall_seconds": round(time.monotonic() - started, 1)}
    report["targets"] = evaluate_targets(kinds)
    report["passed"] = all(t["passed"] for t in report["targets"] if t["judged"])
    report["table"] = lines = report_lines(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print()
    print("\n".join(lines))
    print(f"\n{report['wall_seconds']} s; load average {report['machine']['load_average_before']} before, "
          f"{report['machine']['load_average_after']} after; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
