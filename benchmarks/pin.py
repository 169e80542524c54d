"""Pin convergence: how long after ``PinVersion`` returns every recommender serves the pinned version.

A real trainer and N recommenders (processes, as deployed) share one model
root holding two versions of a MovieLens-100K-shaped model. Each flip pins the
older version through the trainer's ``PinVersion`` RPC (a rollback), waits
until every replica's ``GetModelStatus`` names it, then unpins (``version = 0``)
and waits until every replica is back on the newest. The time counted runs
from the RPC returning to the last replica serving the target; each replica
is asked every 20 ms. A random pause between flips lands the pin anywhere in
the replicas' poll cycle, so the figures cover the whole cycle rather than
one phase of it. Repeated for each ``--poll-seconds`` (default 1 s, the
recommender's default, and 0.5 s), with fresh replicas each time.

What to expect: a replica sees the pin at its next poll (0 to one poll
interval later) and then loads the version (``serving_load_seconds``, also
reported), so the last of N replicas serves it after about one poll interval
plus one load, at most.

Run ``python benchmarks/pin.py`` (about 2 minutes; ``--tiny`` for a shorter
run with 2 flips). Prints a table, writes JSON to --out.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
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

from benchmarks.serve import server_process, synthetic_artifact, variant  # noqa: E402 - after the sys.path fix above


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--flips", type=int, default=6, help="pin/unpin pairs per poll setting")
    parser.add_argument("--poll-seconds", default="1,0.5", help="the recommenders' --poll-seconds, comma-separated")
    parser.add_argument("--tiny", action="store_true", help="2 flips, for a quick check that it runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "pin.json"))
    args = parser.parse_args(argv)
    args.poll_seconds = [float(p) for p in args.poll_seconds.split(",")]
    if args.tiny:
        args.flips = min(args.flips, 2)
    return args


class Watcher(threading.Thread):
    """Asks one replica for its served version every 20 ms; remembers when each version was first seen after a mark."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        from clients import RecommenderClient

        self.client = RecommenderClient(address, timeout=5)
        self.failures: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._times: list[float] = []  # monotonic, ascending
        self._seen: list[tuple[int, float]] = []  # (version, its load seconds) at each of _times

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status = self.client.model_status(timeout=2)
                with self._lock:
                    self._times.append(time.monotonic())
                    self._seen.append((status.served_version or 0,
                                       status.metrics.get("serving_load_seconds", float("nan"))))
            except Exception as exc:  # every failure is reported
                self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
            self.stop.wait(0.02)

    def serving_since(self, version: int, since: float) -> tuple[float, float] | None:
        """(when, load seconds) of the first answer after ``since`` naming ``version``."""
        with self._lock:
            start = bisect.bisect_left(self._times, since)
            return next(((self._times[i], self._seen[i][1]) for i in range(start, len(self._times))
                         if self._seen[i][0] == version), None)


def measure(poll: float, args, work: Path, root: str, trainer, rng: random.Random) -> dict:
    from clients import TrainerClient

    replicas, watchers, flips = [], [], []
    try:
        for n in range(args.replicas):
            replicas.append(server_process(f"recommender-{n}", [sys.executable, "-m", "recommender_service.server",
                                                        "--port", "0", "--model-root", root,
                                                        "--poll-seconds", str(poll)],
                                   work / f"recommender-{poll}-{n}.log").start(120))
        watchers = [Watcher(r.address) for r in replicas]
        for w in watchers:
            w.client.wait_until_serving(timeout=120)
            w.start()
        with TrainerClient(trainer.address, timeout=10) as tc:
            _wait_all(watchers, 2, time.monotonic() - 1e-3, 120)  # every replica on the newest before the first pin
            for _ in range(args.flips):
                for target, call in ((1, lambda: tc.pin_version(1)), (2, tc.unpin)):
                    time.sleep(rng.uniform(0.3, 0.3 + poll))  # anywhere in the poll cycle
                    call()
                    returned = time.monotonic()
                    seen = _wait_all(watchers, target, returned, 60)
                    flips.append({
                        "action": "pin" if target == 1 else "unpin", "version": target,
                        "seconds_per_replica": [round(t - returned, 3) if t else None for t, _ in seen],
                        "load_seconds_per_replica": [load for _, load in seen],
                    })
                    done = [t for t, _ in seen]
                    flips[-1]["all_seconds"] = round(max(done) - returned, 3) if None not in done else None
    finally:
        for w in watchers:
            w.stop.set()
        for w in watchers:
            w.join(10)
            w.client.close()
        for r in replicas:
            r.terminate()

    def summary(action: str) -> dict:
        rows = [f for f in flips if f["action"] == action]
        times = [f["all_seconds"] for f in rows if f["all_seconds"] is not None]
        loads = [x for f in rows for x in f["load_seconds_per_replica"] if x == x]
        return {"median_seconds": round(statistics.median(times), 3) if times else None,
                "min_seconds": min(times) if times else None, "max_seconds": max(times) if times else None,
                "median_load_seconds": round(statistics.median(loads), 3) if loads else None,
                "converged": len(times), "flips": len(rows)}

    return {"poll_seconds": poll, "pin": summary("pin"), "unpin": summary("unpin"), "rows": flips,
            "failed_status_calls": sum(len(w.failures) for w in watchers),
            "failures_sample": [f for w in watchers for f in w.failures][:5]}


def _wait_all(watchers, version: int, since: float, timeout: float) -> list[tuple[float | None, float]]:
    deadline = since + timeout
    while time.monotonic() < deadline:
        seen = [w.serving_since(version, since) for w in watchers]
        if None not in seen:
            return seen
        time.sleep(0.01)
    return [w.serving_since(version, since) or (None, float("nan")) for w in watchers]


def main(argv=None) -> int:
    args = parse_args(argv)
    from movierec_common.artifact import VersionMetadata
    from trainer_service.publisher import publish

    work = Path(tempfile.mkdtemp(prefix="movierec-pin-"))
    root = str(work / "models")
    artifact = synthetic_artifact(args.seed)
    for number, published in enumerate((artifact, variant(artifact, 1, args.seed))):
        publish(root, published, VersionMetadata(model_kind="two_tower", extra={"benchmark": "pin", "variant": number}))
    trainer = None
    results = []
    try:
        trainer = server_process("trainer", [sys.executable, "-m", "trainer_service.server", "--port", "0",
                                     "--model-root", root], work / "trainer.log").start(120)
        rng = random.Random(args.seed)
        for poll in args.poll_seconds:
            results.append(measure(poll, args, work, root, trainer, rng))
    finally:
        if trainer is not None:
            trainer.terminate()
        shutil.rmtree(work, ignore_errors=True)

    report = {"benchmark": "pin", "replicas": args.replicas, "flips": args.flips,
              "model": f"synthetic, MovieLens 100K shape ({artifact.num_users} users, {artifact.num_items} movies)",
              "measured": "PinVersion (or unpin) RPC returned -> the last replica's GetModelStatus names the version",
              "command": "python benchmarks/pin.py" + (" --tiny" if args.tiny else ""),
              "results": results, "cpus": os.cpu_count()}
    print(f"\n{args.replicas} replicas, {report['model']}, {args.flips} pin/unpin flips per poll setting")
    print(f"{'poll s':>6}  {'action':<6}  {'median s':>8}  {'min s':>6}  {'max s':>6}  {'load s (median)':>15}  "
          "converged")
    ok = True
    for result in results:
        for action in ("pin", "unpin"):
            s = result[action]
            print(f"{result['poll_seconds']:>6g}  {action:<6}  {_fmt(s['median_seconds']):>8}  "
                  f"{_fmt(s['min_seconds']):>6}  {_fmt(s['max_seconds']):>6}  {_fmt(s['median_load_seconds']):>15}  "
                  f"{s['converged']}/{s['flips']}")
            ok = ok and s["converged"] == s["flips"]
        ok = ok and result["failed_status_calls"] == 0
    print(f"failed status calls: {sum(r['failed_status_calls'] for r in results)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
