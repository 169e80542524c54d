"""Replica convergence: how long after a publish every recommender serves it.

N recommenders (real processes, as deployed) watch one model root, a local
folder or, with ``--s3``, a bucket on moto's S3 server in this process. Each
repeat publishes a new version with the trainer's own ``publish()`` (visibly
different vectors, not a byte copy) while a light load calls every replica,
then polls every replica's ``GetModelStatus`` until all serve it. Reported:
the time from ``publish()`` returning to the last replica serving the version
(the convergence), each replica's own ``serving_load_seconds``, failed calls,
and whether any replica's version ever went backwards.

Run ``python benchmarks/replicas.py`` (about 2 minutes; ``--tiny`` for a
seconds-long run on synthetic vectors). Prints a table, writes JSON to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repo importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.serve import DEFAULT_MOVIELENS, server_process, synthetic_artifact, trained_artifact, variant  # noqa: E402

TARGET_CONVERGENCE_SECONDS = 5.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="the recommenders' --poll-seconds")
    parser.add_argument("--s3", action="store_true", help="model root on moto's S3 server instead of a folder")
    parser.add_argument("--movielens-dir", default=os.environ.get("MOVIELENS_DIR", str(DEFAULT_MOVIELENS)))
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="synthetic vectors, 2 replicas, 2 repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "replicas.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.replicas, args.repeats = min(args.replicas, 2), min(args.repeats, 2)
    return args


class Watcher(threading.Thread):
    """Polls one replica's status and calls it lightly; records versions over time and failures."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        from clients import RecommenderClient

        self.client = RecommenderClient(address, timeout=5)
        self.versions: list[tuple[float, int]] = []
        self.load_seconds: dict[int, float] = {}
        self.calls = 0
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        user = 0
        while not self.stop.is_set():
            try:
                status = self.client.model_status()
                if status.served_version is not None:
                    self.versions.append((time.monotonic(), status.served_version))
                    self.load_seconds.setdefault(status.served_version,
                                                 status.metrics.get("serving_load_seconds", float("nan")))
                for _ in range(5):
                    user += 1
                    self.client.recommend(str(1 + user % 900), k=10)
                    self.calls += 1
            except Exception as exc:  # every failure counts
                self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
            time.sleep(0.02)

    def first_seen(self, version: int) -> float | None:
        return next((t for t, v in self.versions if v >= version), None)

    def went_backwards(self) -> bool:
        served = [v for _, v in self.versions]
        return any(b < a for a, b in zip(served, served[1:], strict=False))


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="movierec-replicas-"))
    with contextlib.ExitStack() as stack:
        root = str(work / "models")
        if args.s3:  # moto's S3 in this process; the recommenders reach it through the AWS_* environment
            from tests.s3 import s3_server

            stack.enter_context(s3_server("bench"))
            root = "s3://bench/models"
        try:
            return run(args, work, root)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path, root: str) -> int:
    from movierec_common.artifact import VersionMetadata
    from movierec_common.model_root import list_versions
    from trainer_service.publisher import publish

    if args.tiny or not (Path(args.movielens_dir) / "u.data").is_file():
        artifact, source = synthetic_artifact(args.seed), "synthetic (MovieLens 100K shape)"
    else:
        artifact, source = trained_artifact(args.movielens_dir, args.train_epochs, args.seed), "two_tower on ML-100K"
    publish(root, artifact, VersionMetadata(model_kind="two_tower", extra={"benchmark": "replicas", "variant": 0}))

    replicas, watchers, rows = [], [], []
    try:
        for n in range(args.replicas):
            replicas.append(server_process(f"recommender-{n}", [sys.executable, "-m", "recommender_service.server",
                                                        "--port", "0", "--model-root", root,
                                                        "--poll-seconds", str(args.poll_seconds)],
                                   work / f"recommender-{n}.log").start(120))
        watchers = [Watcher(r.address) for r in replicas]
        for w in watchers:
            w.client.wait_until_serving(timeout=120)
            w.start()
        for repeat in range(1, args.repeats + 1):
            time.sleep(2.0)  # let the load settle between publishes
            metadata = VersionMetadata(model_kind="two_tower", extra={"benchmark": "replicas", "variant": repeat})
            version = publish(root, variant(artifact, repeat, args.seed), metadata)
            published = time.monotonic()
            deadline = published + 120
            while any(w.first_seen(version) is None for w in watchers) and time.monotonic() < deadline:
                time.sleep(0.05)
            seen = [w.first_seen(version) for w in watchers]
            per_replica = [round(t - published, 2) if t is not None else None for t in seen]
            rows.append({"version": version, "seconds_per_replica": per_replica,
                         "convergence_seconds": max(s for s in per_replica if s is not None)
                         if None not in per_replica else None,
                         "load_seconds_per_replica": [w.load_seconds.get(version) for w in watchers]})
    finally:
        for w in watchers:
            w.stop.set()
        for w in watchers:
            w.join(10)
            w.client.close()
        for r in replicas:
            r.terminate()

    converged = [r["convergence_seconds"] for r in rows if r["convergence_seconds"] is not None]
    report = {
        "benchmark": "replicas", "replicas": args.replicas, "repeats": args.repeats, "poll_seconds": args.poll_seconds,
        "root": "s3 (moto)" if args.s3 else "local folder", "model": source,
        "users": artifact.num_users, "movies": artifact.num_items, "rows": rows,
        "median_convergence_seconds": statistics.median(converged) if converged else None,
        "max_convergence_seconds": max(converged) if converged else None,
        "calls": sum(w.calls for w in watchers), "failed_calls": sum(len(w.failures) for w in watchers),
        "failures_sample": [f for w in watchers for f in w.failures][:5],
        "versions_went_backwards": any(w.went_backwards() for w in watchers),
        "versions_left": list_versions(root) if not args.s3 else None,
        "cpus": os.cpu_count(),
    }
    print(f"\n{args.replicas} replicas, {report['root']}, {source}, poll {args.poll_seconds}s")
    print(f"{'version':>7}  {'seconds per replica':<28} {'convergence':>11}  load seconds per replica")
    for row in rows:
        print(f"{row['version']:>7}  {str(row['seconds_per_replica']):<28} {str(row['convergence_seconds']):>11}  "
              f"{row['load_seconds_per_replica']}")
    ok = (report["median_convergence_seconds"] is not None
          and report["median_convergence_seconds"] <= TARGET_CONVERGENCE_SECONDS)
    print(f"median convergence {report['median_convergence_seconds']} s, max {report['max_convergence_seconds']} s "
          f"(target <= {TARGET_CONVERGENCE_SECONDS} s): {'PASS' if ok else 'FAIL'}")
    print(f"calls {report['calls']}, failed {report['failed_calls']}, "
          f"a version went backwards: {report['versions_went_backwards']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0 if ok and report["failed_calls"] == 0 and not report["versions_went_backwards"] else 1


if __name__ == "__main__":
    sys.exit(main())
