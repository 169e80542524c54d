"""Cross-replica freshness: from RecordInteractions acknowledged on one replica to another replica's answer.

Issue 19's target: p99 <= 1 s from the acknowledgement on one replica until
another replica's ``Recommend`` answer reflects the interaction, with 3
replicas on one PostgreSQL (the pgserver wheel's real server, or
``--postgres-url``). The replicas are real processes
(``python -m recommender_service.server --events postgresql://...``) serving
one version with a session rule (clustered synthetic vectors, the pooled
query encoder), so a user's fresh interactions change their answer.

Each sample records ONE interaction on replica ``A`` (the writer rotates over
the replicas) for a user whose answer it must change, then polls every other
replica's ``Recommend`` for that user every ``--poll-ms`` (5 ms) until the
answer reflects it. Two kinds, alternating:

* **visitor**: a user id never seen before; the answer is the cold-start
  popularity list until the replica holds the interaction, then personal
  (``cold_start`` false);
* **known user**: a user of the version with a movie from the top of every
  other replica's current answer (checked before the write); once a replica
  holds the interaction, ``exclude_seen`` must leave that movie out.

The time of a sample on a replica runs from the moment the writer's
acknowledgement arrived to the moment the first answer reflecting it
arrived (conservative: the state changed somewhere inside that last poll).
Right after the acknowledgement, the writer itself is asked once: its answer
must already reflect the write (read your writes). Samples start at a random
moment within a follower's 0.2 s cycle (a random pause between samples).
``--background-rate`` adds paced ingestion (``benchmarks/ingestion_load.py``,
spread over the replicas, other users) while sampling.

Run ``python benchmarks/freshness.py`` (about 2 minutes; ``--tiny`` takes 20
samples on a small model). Prints a table and PASS/FAIL, writes JSON to
``--out``; the exit status is 1 only when a sample was never observed or a
writer did not read its own write (speed is reported, not judged).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repo importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.ingestion_load import Population  # noqa: E402
from benchmarks.ingestion_support import (  # noqa: E402
    IngestClients,
    Postgres,
    acknowledged_in,
    build_model,
    launch_recommender,
    stop_all,
    wait_serving,
)
from benchmarks.report import target_lines, work_folder  # noqa: E402
from movierec_common.server_process import ServerProcess  # noqa: E402

TARGET_P99_S = 1.0
CALL_TIMEOUT_S = 10.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--samples", type=int, default=300, help="interactions written, one per sample")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="pause between two polls of one replica")
    parser.add_argument("--max-gap-ms", type=float, default=250.0,
                        help="random pause before each sample, up to this (spreads samples over the follow cycle)")
    parser.add_argument("--timeout", type=float, default=10.0, help="a sample not observed by then counts as lost")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--background-rate", type=float, default=0.0,
                        help="interactions/s ingested meanwhile, spread over the replicas (other users)")
    parser.add_argument("--postgres-url", default=None,
                        help="an empty PostgreSQL database or schema (default: start the pgserver wheel's server)")
    parser.add_argument("--threads", type=int, default=8, help="the replicas' --threads")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "freshness.json"))
    parser.add_argument("--work-dir", default=None, help="keep logs here (default: temp, removed)")
    parser.add_argument("--tiny", action="store_true", help="20 samples, 2,000 movies x 500 users: a CI run")
    args = parser.parse_args(argv)
    if args.replicas < 2:
        parser.error("--replicas must be at least 2: one writes, the others are watched")
    if args.tiny:
        args.samples = min(args.samples, 20)
        args.users, args.items, args.dim = min(args.users, 500), min(args.items, 2_000), min(args.dim, 32)
    return args


class Replica:
    """One replica's channel and stub, and what it is called."""

    def __init__(self, server: ServerProcess):
        import grpc

        from movierec.v1 import recommender_pb2_grpc

        self.name = server.name
        self.server = server
        self.channel = grpc.insecure_channel(server.target)
        self.stub = recommender_pb2_grpc.RecommenderStub(self.channel)

    def recommend(self, user: str, k: int):
        from movierec.v1 import recommender_pb2

        return self.stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=k), timeout=CALL_TIMEOUT_S)

    def record(self, event_id: str, user: str, movie: int) -> None:
        from movierec.v1 import recommender_pb2

        self.stub.RecordInteractions(recommender_pb2.RecordInteractionsRequest(interactions=[
            recommender_pb2.Interaction(event_id=event_id, user_id=user, movie_id=movie)]), timeout=CALL_TIMEOUT_S)


def reflects(kind: str, movie: int):
    """The predicate an answer meets once the replica holds the interaction."""
    if kind == "visitor":
        return lambda answer: not answer.cold_start
    return lambda answer: all(item.movie_id != movie for item in answer.items)


def watch(replica: Replica, user: str, k: int, met, acknowledged: float, poll_s: float, timeout: float
          ) -> dict[str, Any]:
    """Polls ``replica`` until ``met(answer)``; seconds from ``acknowledged`` to that answer's arrival."""
    polls = 0
    while True:
        sent = time.monotonic()
        answer = replica.recommend(user, k)
        arrived = time.monotonic()
        polls += 1
        if met(answer):
            return {"replica": replica.name, "seconds": round(arrived - acknowledged, 4),
                    "last_poll_sent_s": round(sent - acknowledged, 4), "polls": polls}
        if arrived - acknowledged > timeout:
            return {"replica": replica.name, "seconds": None, "polls": polls}
        time.sleep(poll_s)


def pick_known(replicas: list[Replica], user: str, k: int) -> int | None:
    """A movie in every watched replica's current answer for ``user`` (the highest ranked such), or None."""
    answers = [[item.movie_id for item in r.recommend(user, k).items] for r in replicas]
    common = set(answers[0]).intersection(*answers[1:])
    return next((m for m in answers[0] if m in common), None)


def sample(number: int, kind: str, writer: Replica, watched: list[Replica], user: str, movie: int | None,
           args, pool: ThreadPoolExecutor, run_tag: str) -> dict[str, Any]:
    if kind == "known":
        movie = pick_known(watched + [writer], user, args.k)
        if movie is None:
            return {"number": number, "kind": kind, "skipped": "no movie common to every replica's answer"}
    else:
        before = [r.recommend(user, args.k).cold_start for r in watched]
        if not all(before):
            return {"number": number, "kind": kind, "skipped": "the visitor was not a cold start before the write"}
    assert movie is not None
    met = reflects(kind, movie)
    sent = time.monotonic()
    writer.record(f"fresh-{run_tag}-{number}", user, movie)
    acknowledged = time.monotonic()
    futures = [pool.submit(watch, r, user, args.k, met, acknowledged, args.poll_ms / 1000.0, args.timeout)
               for r in watched]
    own = met(writer.recommend(user, args.k))  # read your writes: at once, on the writer
    observed = [f.result() for f in futures]
    return {"number": number, "kind": kind, "writer": writer.name, "user": user, "movie": movie,
            "write_ms": round((acknowledged - sent) * 1000, 2), "writer_reflects_at_once": own,
            "observed": observed}


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "p50_s": None, "p95_s": None, "p99_s": None, "max_s": None, "mean_s": None}
    a = np.asarray(values, dtype=np.float64)
    return {"count": int(a.size), "p50_s": round(float(np.percentile(a, 50)), 4),
            "p95_s": round(float(np.percentile(a, 95)), 4), "p99_s": round(float(np.percentile(a, 99)), 4),
            "max_s": round(float(a.max()), 4), "mean_s": round(float(a.mean()), 4)}


def summarise(samples: list[dict]) -> dict[str, Any]:
    done = [s for s in samples if "observed" in s]
    each = [o["seconds"] for s in done for o in s["observed"] if o["seconds"] is not None]
    every = [max(o["seconds"] for o in s["observed"]) for s in done
             if all(o["seconds"] is not None for o in s["observed"])]
    by_kind = {kind: percentiles([o["seconds"] for s in done if s["kind"] == kind for o in s["observed"]
                                  if o["seconds"] is not None]) for kind in ("visitor", "known")}
    return {"samples": len(samples), "skipped": len(samples) - len(done),
            "observations": sum(len(s["observed"]) for s in done),
            "not_observed": sum(1 for s in done for o in s["observed"] if o["seconds"] is None),
            "writer_missed_own_write": sum(1 for s in done if not s["writer_reflects_at_once"]),
            "each_replica": percentiles(each), "every_replica": percentiles(every), "by_kind": by_kind,
            "write_ms": percentiles([s["write_ms"] / 1000 for s in done]),
            "polls_median": float(np.median([o["polls"] for s in done for o in s["observed"]])) if done else None}


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def report_lines(report: dict) -> list[str]:
    s, c = report["summary"], report["config"]
    lines = [f"{c['replicas']} replicas on one PostgreSQL ({report['postgres']}), {report['model']['movies']:,} "
             f"movies x {report['model']['users']:,} users; {s['samples']} samples (one interaction each, writer "
             f"rotating, visitors and known users alternating), polled every {c['poll_ms']:g} ms; background "
             f"ingestion {report['background']['per_s']:,.0f}/s; load average {report['load_average']['before']} "
             f"before, {report['load_average']['after']} after ({report['machine']['cpus']} CPUs)",
             "",
             "| acknowledged on one replica -> answer reflects it on | samples | p50 s | p95 s | p99 s | max s |",
             "|---|---|---|---|---|---|"]
    rows = [("each other replica", s["each_replica"]), ("every other replica", s["every_replica"]),
            ("  visitors (cold start -> personal)", s["by_kind"]["visitor"]),
            ("  known users (movie excluded)", s["by_kind"]["known"])]
    for name, p in rows:
        lines.append(f"| {name} | {p['count']} | {fmt(p['p50_s'])} | {fmt(p['p95_s'])} | {fmt(p['p99_s'])} "
                     f"| {fmt(p['max_s'])} |")
    lines += ["", f"not observed within {c['timeout']:g} s: {s['not_observed']}; skipped: {s['skipped']}; writer's "
                  f"next answer missing its own write: {s['writer_missed_own_write']}; write (1 interaction) p50 "
                  f"{fmt((s['write_ms']['p50_s'] or 0) * 1000)} ms, p99 {fmt((s['write_ms']['p99_s'] or 0) * 1000)} ms",
              ""]
    return lines + target_lines(report["targets"])


def main(argv=None) -> int:
    args = parse_args(argv)
    work = work_folder(args.work_dir, "movierec-freshness-bench-")
    started = time.monotonic()
    root = str(work / "models")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    load_before = os.getloadavg()
    rng = random.Random(args.seed)
    run_tag = f"{int(time.time())}-{os.getpid()}"
    report: dict[str, Any] = {"benchmark": "freshness", "created_at": dt.datetime.now(dt.UTC).isoformat(),
                              "config": {k: v for k, v in vars(args).items() if k not in ("out", "work_dir",
                                                                                         "postgres_url")}}
    servers: list[ServerProcess] = []
    replicas: list[Replica] = []
    background: list[IngestClients] = []
    try:
        with ExitStack() as stack:
            database = stack.enter_context(Postgres(args.postgres_url))
            assert database.url is not None
            report["postgres"] = "given URL" if args.postgres_url else f"pgserver wheel ({database.server.source})"
            print(f"Publishing {args.items:,} movies x {args.users:,} users; starting {args.replicas} replicas...",
                  flush=True)
            artifact = build_model(args, root)
            report["model"] = {"movies": artifact.num_items, "users": artifact.num_users, "dim": args.dim}
            for n in range(args.replicas):
                servers.append(launch_recommender(f"replica-{n}", root, database.url, work, args.threads))
            wait_serving(servers)
            replicas = [Replica(server) for server in servers]
            known = [str(u) for u in artifact.user_ids.tolist()]
            rng.shuffle(known)
            sample_users, other_users = known[:len(known) // 2], known[len(known) // 2:]
            if args.background_rate > 0:
                # Other users than the samples', so that no background write changes a sampled answer.
                pop_file = work / "background-population.json"
                users = other_users + [f"bg-visitor-{n}" for n in range(1_000)]
                pop_file.write_text(json.dumps(Population.build(
                    users, np.random.default_rng(args.seed).pareto(1.5, size=len(users)) + 1.0, artifact.movie_ids,
                    artifact.popularity.astype(np.float64) + 1.0)))
                for n, server in enumerate(servers):
                    background.append(IngestClients(work, f"background-{n}", server.target, pop_file, args.seed,
                                                    [n + 1], batch=100, rate=args.background_rate / len(servers),
                                                    in_flight=16, seconds=0.0))
                for client in background:
                    client.go()
            popular = artifact.movie_ids[np.argsort(-artifact.popularity)[:200]].tolist()
            print(f"{args.samples} samples...", flush=True)
            samples = []
            sampling_from = time.monotonic()
            with ThreadPoolExecutor(max_workers=args.replicas) as pool:
                for number in range(args.samples):
                    time.sleep(rng.uniform(0, args.max_gap_ms / 1000.0))
                    writer = replicas[number % len(replicas)]
                    watched = [r for r in replicas if r is not writer]
                    if number % 2 == 0:
                        kind, user, movie = "visitor", f"fresh-visitor-{run_tag}-{number}", rng.choice(popular)
                    else:
                        kind, user, movie = "known", sample_users[(number // 2) % len(sample_users)], None
                    result = sample(number, kind, writer, watched, user, movie, args, pool, run_tag)
                    samples.append(result)
                    if (number + 1) % 50 == 0:
                        print(f"  {number + 1} samples; {summarise(samples)['each_replica']}", flush=True)
            sampling_until = time.monotonic()
            results = []
            for client in background:
                results += client.finish(stop=True)
            report["background"] = {"rate": args.background_rate,
                                    **acknowledged_in(results, sampling_from, sampling_until)} if results else {
                "rate": 0.0, "per_s": 0.0}
            report["status_after"] = [{"replica": r.name, "events_followed": st.events_followed,
                                       "fresh_users": st.fresh_users, "events_problem": st.events_problem}
                                      for r in replicas for st in [status(r)]]
    finally:
        for client in background:
            client.kill()
        for replica in replicas:
            replica.channel.close()
        stop_all(servers)
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarise(samples)
    report["summary"] = summary
    report["samples"] = samples
    import grpc

    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                         "python": platform.python_version(), "grpcio": grpc.__version__}
    report["load_average"] = {"before": [round(v, 2) for v in load_before],
                              "after": [round(v, 2) for v in os.getloadavg()]}
    p99 = summary["each_replica"]["p99_s"]
    every = summary["every_replica"]["p99_s"]
    report["targets"] = [
        {"name": "p99 acknowledgement -> another replica's answer reflects it", "value": p99,
         "limit": f"<= {TARGET_P99_S}", "passed": p99 is not None and p99 <= TARGET_P99_S, "unit": "s"},
        {"name": "p99 acknowledgement -> every other replica's answer reflects it", "value": every,
         "limit": f"<= {TARGET_P99_S}", "passed": every is not None and every <= TARGET_P99_S, "unit": "s"},
        {"name": "samples never observed, or not read back at once by their writer",
         "value": summary["not_observed"] + summary["writer_missed_own_write"], "limit": "== 0",
         "passed": summary["not_observed"] + summary["writer_missed_own_write"] == 0, "unit": ""},
    ]
    report["passed"] = all(t["passed"] for t in report["targets"])
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    lines = report_lines(report)
    report["table"] = lines
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print()
    print("\n".join(lines))
    print(f"\n{report['wall_seconds']} s; wrote {args.out}")
    ok = summary["not_observed"] == 0 and summary["writer_missed_own_write"] == 0 and summary["skipped"] == 0
    return 0 if ok else 1


def status(replica: Replica):
    from movierec.v1 import recommender_pb2

    return replica.stub.GetModelStatus(recommender_pb2.GetModelStatusRequest(), timeout=CALL_TIMEOUT_S)


if __name__ == "__main__":
    sys.exit(main())
