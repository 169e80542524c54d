"""Ingestion through gRPC: interactions/s acknowledged, Recommend latency while ingesting, nothing lost.

Issue 19's ingestion targets, measured through real processes as deployed:
a recommender (``python -m recommender_service.server --events URL``) serving
a version of realistic size with a session rule (clustered synthetic vectors,
``tests.artifacts.clustered_artifact``, 20,000 movies x 10,000 users, the
pooled query encoder, so a user's fresh interactions shape their next answer),
driven by client processes of their own (``benchmarks/ingestion_load.py`` for
RecordInteractions, ``benchmarks/loadgen.py`` for Recommend). Interactions come
from 10,000 known users and 2,000 visitors the version has never seen, with
long-tailed activity, on the version's movies by popularity, 60% rated, each
with its own event id. One run, three parts:

* **Tracking cost.** Recommend p50/p99 at 8 in flight on a recommender with
  ``--events none`` and on one with an (empty) event store and no ingestion,
  rounds interleaved: what recommendation ids and the online-hit tracking add
  to the request path.
* **Throughput**, per store (SQLite in WAL with ``synchronous=FULL``;
  PostgreSQL, the pgserver wheel's real server unless ``--postgres-url``):
  ``--clients`` processes each keep ``--in-flight`` RecordInteractions calls of
  ``--batch`` interactions in flight for ``--round-seconds`` after a warm-up;
  the rate is the interactions acknowledged inside the measured window,
  median over ``--rounds``. CPU seconds of the recommender, the database,
  the clients and the whole machine are taken over the same window: on 2
  shared cores they say what bounds the rate.
* **Recommend latency while ingesting**, per store: p50/p99 at 8 in flight
  without ingestion and while ``--ingest-rate`` interactions/s are sent,
  paced (an open loop), by another client process, rounds interleaved
  (ABBA) in the same run; the ratio of the median p99s is the figure. The
  throughput rounds ran first, so most users already have fresh histories
  (answered live, never from the answer cache) in both conditions, and the
  paced ingestion adds more as the rounds go.

At the end of each store's part, every acknowledged interaction is looked up
in the store (``open_store(url).read_after``): present exactly once, with the
user, movie and rating sent (recomputed from the client's seed, stream and
batch number). Stored rows no acknowledgement covers (a call that failed after
its commit) are counted apart.

Run ``python benchmarks/ingestion.py`` (about 5 minutes; ``--tiny`` runs a
small model and half-second rounds in under half a minute). It prints the
tables and PASS/FAIL per target and writes JSON to ``--out``; the exit status
is 1 only when an acknowledged interaction is missing, changed or stored twice
(speed is reported, not judged, so that a busy machine does not fail it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repo importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.ingestion_load import Population  # noqa: E402
from benchmarks.ingestion_support import (  # noqa: E402
    PREBUILD_RATE,
    CpuWindow,
    IngestClients,
    Postgres,
    acknowledged_in,
    build_model,
    check_store,
    launch_recommender,
    merge_errors,
    others_cores,
    population,
    prebuild_batches,
    stop_all,
    wait_serving,
)
from benchmarks.report import target_lines, work_folder  # noqa: E402
from benchmarks.serve import latency_stats, run_loadgen  # noqa: E402
from movierec_common.server_process import ServerProcess  # noqa: E402

# The targets (2 cores, batches of 100).
TARGET_RATE = {"sqlite": 20_000.0, "postgresql": 10_000.0}
TARGET_P99_RATIO = 1.5
STORES = ("sqlite", "postgresql")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--postgres-url", default=None,
                        help="an empty PostgreSQL database or schema (default: start the pgserver wheel's server)")
    parser.add_argument("--users", type=int, default=10_000, help="users the served version knows")
    parser.add_argument("--visitors", type=int, default=2_000, help="users it never saw, interacting too")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100, help="interactions per RecordInteractions call")
    parser.add_argument("--clients", type=int, default=2, help="client processes in the throughput rounds")
    parser.add_argument("--in-flight", type=int, default=4, help="calls each throughput client keeps in flight")
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds per store")
    parser.add_argument("--round-seconds", type=float, default=5.0, help="measured seconds per throughput round")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each round")
    parser.add_argument("--ingest-rate", type=float, default=5_000.0,
                        help="interactions/s sent (paced) during the latency rounds with ingestion")
    parser.add_argument("--ingest-outstanding", type=int, default=32,
                        help="the most paced calls outstanding at once")
    parser.add_argument("--latency-pairs", type=int, default=5,
                        help="latency rounds per condition (without / with ingestion), interleaved ABBA")
    parser.add_argument("--latency-seconds", type=float, default=6.0, help="measured seconds per latency round")
    parser.add_argument("--recommend-in-flight", type=int, default=8)
    parser.add_argument("--tracking-pairs", type=int, default=3,
                        help="rounds per recommender (--events none / events on) in the tracking-cost part")
    parser.add_argument("--skip-tracking", action="store_true", help="leave out the tracking-cost part")
    parser.add_argument("--skip-latency", action="store_true", help="leave out the latency-while-ingesting part")
    parser.add_argument("--threads", type=int, default=8, help="the recommender's --threads")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "ingestion.json"))
    parser.add_argument("--work-dir", default=None, help="keep stores and logs here (default: temp, removed)")
    parser.add_argument("--tiny", action="store_true",
                        help="2,000 movies x 2,000 users, half-second rounds, one round or pair each: a CI run")
    args = parser.parse_args(argv)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = set(args.stores) - set(STORES)
    if unknown or not args.stores:
        parser.error(f"--stores: choose from {', '.join(STORES)}")
    if args.tiny:
        args.users, args.visitors = min(args.users, 2_000), min(args.visitors, 200)
        args.items, args.dim = min(args.items, 2_000), min(args.dim, 32)
        args.rounds, args.latency_pairs, args.tracking_pairs = 1, 1, 1
        args.round_seconds = min(args.round_seconds, 0.5)
        args.latency_seconds = min(args.latency_seconds, 0.5)
        args.warmup = min(args.warmup, 0.2)
    return args


# ----------------------------------------------------------------------------
# Parts
# ----------------------------------------------------------------------------

class Streams:
    """Stream numbers, unique in the run: every client's event ids are its own."""

    def __init__(self) -> None:
        self.next = 1
        self.sent: list[dict] = []  # every client's result, for the store check

    def take(self, count: int) -> list[int]:
        taken = list(range(self.next, self.next + count))
        self.next += count
        return taken


def throughput_rounds(args, work: Path, server: ServerProcess, store: str, population_file: Path,
                      streams: Streams, db_pids: list[int]) -> dict:
    rounds = []
    for number in range(args.rounds):
        rows_before = stored_so_far(streams)
        clients = IngestClients(work, f"{store}-throughput-{number}", server.target, population_file, args.seed,
                                streams.take(args.clients), batch=args.batch, rate=0.0, in_flight=args.in_flight,
                                seconds=args.warmup + args.round_seconds,
                                prebuild=prebuild_batches(PREBUILD_RATE / args.clients,
                                                          args.warmup + args.round_seconds, args.batch))
        try:
            assert server.process is not None
            cpu = CpuWindow({"recommender": [server.process.pid], "database": db_pids, "clients": clients.pids(),
                             "ours": [os.getpid()]})  # this process and every process it started
            load_before = os.getloadavg()[0]
            t0 = clients.go()
            start, end = t0 + args.warmup, t0 + args.warmup + args.round_seconds
            window = cpu.at(start, end)
            results = clients.finish(timeout=args.warmup + args.round_seconds + 120)
            window.join(30)
        finally:
            clients.kill()
        streams.sent += results
        measured = acknowledged_in(results, start, end)
        used = cpu.seconds()
        per_interaction = {name: round(used[name] / max(measured["acknowledged"], 1) * 1e6, 1)
                           for name in ("recommender", "database", "clients")}
        row = {**measured, "round": number, "store_rows_before": rows_before, "cpu_seconds": used,
               "cpu_us_per_interaction": per_interaction,
               "machine_busy_cores": round(used["machine"] / args.round_seconds, 2),
               "others_cores": others_cores(used, args.round_seconds),
               "client_cpu_seconds_total": round(sum(r["client_cpu_seconds"] for r in results), 2),
               "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
               "error_details": merge_errors(results)}
        rounds.append(row)
        print(f"  {store} round {number} ({rows_before:,} rows stored before): {row['per_s']:,.0f} interactions/s "
              f"acknowledged, call p50 "
              f"{row['call_p50_ms']} ms p99 {row['call_p99_ms']} ms, errors {row['errors']}; CPU s: {used}",
              flush=True)
    rates = [r["per_s"] for r in rounds]
    return {"clients": args.clients, "in_flight_per_client": args.in_flight, "batch": args.batch,
            "round_seconds": args.round_seconds, "median_per_s": round(statistics.median(rates), 1),
            "min_per_s": min(rates), "max_per_s": max(rates), "rounds": rounds,
            "median_cpu_us_per_interaction": {name: round(statistics.median(r["cpu_us_per_interaction"][name]
                                                                            for r in rounds), 1)
                                              for name in rounds[0]["cpu_us_per_interaction"]},
            "median_machine_busy_cores": median_of([r["machine_busy_cores"] for r in rounds]),
            "median_others_cores": median_of([r["others_cores"] for r in rounds])}


def stored_so_far(streams: Streams) -> int:
    """Interactions acknowledged by this store's recommender so far (the store holds exactly these)."""
    return sum(result["batch_size"] * sum(1 for code in result["code"] if code == 0) for result in streams.sent)


def recommend_round(args, work: Path, target: str, users_file: Path, tag: str, seed: int, pid: int,
                    db_pids: list[int] | None = None) -> dict:
    """Recommend at ``--recommend-in-flight`` (benchmarks/loadgen.py): latency; the server's CPU, the machine's
    busy cores and the share of them that was not ours, over the measured window."""
    cpu = CpuWindow({"recommender": [pid], "database": db_pids or [], "ours": [os.getpid()]})
    windows: list[threading.Thread] = []
    result = run_loadgen(work, target, users_file, concurrency=args.recommend_in_flight, seconds=args.latency_seconds,
                         warmup=args.warmup, k=args.k, seed=seed, tag=tag,
                         on_measuring=lambda t: windows.append(cpu.at(t, t + args.latency_seconds)))
    stats = latency_stats(result)
    for window in windows:
        window.join(30)
    if windows and cpu.end:
        used = cpu.seconds()
        stats["server_cpu_us_per_call"] = round(used["recommender"] / max(stats["calls"], 1) * 1e6, 1)
        stats["server_cores"] = round(used["recommender"] / args.latency_seconds, 2)
        stats["machine_busy_cores"] = round(used["machine"] / args.latency_seconds, 2)
        stats["others_cores"] = others_cores(used, args.latency_seconds)
    stats["error_details"] = result["error_details"]
    stats["window"] = (result["measure_from"], result["stop_at"])
    return stats


def latency_rounds(args, work: Path, server: ServerProcess, store: str, users_file: Path, population_file: Path,
                   streams: Streams, db_pids: list[int]) -> dict:
    """Recommend at 8 in flight, without and with paced ingestion, ABBA."""
    rows: dict[str, list[dict]] = {"without": [], "with": []}
    for pair in range(args.latency_pairs):
        order = ("without", "with") if pair % 2 == 0 else ("with", "without")
        for condition in order:
            tag = f"{store}-latency-{pair}-{condition}"
            seed = args.seed * 100 + pair
            assert server.process is not None
            if condition == "without":
                stats = recommend_round(args, work, server.target, users_file, tag, seed, server.process.pid,
                                            db_pids)
            else:
                clients = IngestClients(work, tag, server.target, population_file, args.seed, streams.take(1),
                                        batch=args.batch, rate=args.ingest_rate, in_flight=args.ingest_outstanding,
                                        seconds=0.0, prebuild=prebuild_batches(
                                            args.ingest_rate, args.warmup + args.latency_seconds + 15, args.batch))
                try:
                    clients.go()
                    stats = recommend_round(args, work, server.target, users_file, tag, seed, server.process.pid,
                                            db_pids)
                    results = clients.finish(stop=True)
                finally:
                    clients.kill()
                streams.sent += results
                ingest = acknowledged_in(results, *stats["window"])
                ingest["sent_late"] = sum(r.get("sent_late", 0) for r in results)
                ingest["error_details"] = merge_errors(results)
                stats["ingestion"] = ingest
            stats["load_average"] = round(os.getloadavg()[0], 2)
            rows[condition].append(stats)
            extra = ""
            if "ingestion" in stats:
                extra = (f"; ingesting {stats['ingestion']['per_s']:,.0f}/s (call p99 "
                         f"{stats['ingestion']['call_p99_ms']} ms, {stats['ingestion']['errors']} errors)")
            print(f"  {store} {condition} ingestion: Recommend p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms, "
                  f"{stats['calls_per_s']:,.0f} calls/s, {stats['errors']} errors{extra}", flush=True)
    summary = {condition: condition_summary(runs) for condition, runs in rows.items()}
    with_ingest = rows["with"]
    summary["with"]["ingested_per_s_median"] = round(statistics.median(r["ingestion"]["per_s"] for r in with_ingest), 1)
    summary["with"]["ingest_errors"] = sum(r["ingestion"]["errors"] for r in with_ingest)
    summary["with"]["ingest_call_p99_ms_median"] = median_of([r["ingestion"]["call_p99_ms"] for r in with_ingest])
    base, loaded = summary["without"]["p99_ms"], summary["with"]["p99_ms"]
    return {"in_flight": args.recommend_in_flight, "ingest_rate": args.ingest_rate, "seconds": args.latency_seconds,
            "pairs": args.latency_pairs, **summary,
            "p99_ratio": round(loaded / base, 3) if base and loaded else None,
            "p50_ratio": ratio(summary["with"]["p50_ms"], summary["without"]["p50_ms"]),
            "rounds": rows}


def median_of(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(statistics.median(present)), 3) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def condition_summary(runs: list[dict]) -> dict:
    return {"p50_ms": median_of([r["p50_ms"] for r in runs]), "p99_ms": median_of([r["p99_ms"] for r in runs]),
            "calls_per_s": median_of([r["calls_per_s"] for r in runs]),
            "server_cpu_us_per_call": median_of([r.get("server_cpu_us_per_call") for r in runs]),
            "server_cores": median_of([r.get("server_cores") for r in runs]),
            "machine_busy_cores": median_of([r.get("machine_busy_cores") for r in runs]),
            "others_cores": median_of([r.get("others_cores") for r in runs]),
            "calls": sum(r["calls"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "p99_ms_per_round": [r["p99_ms"] for r in runs]}


def tracking_part(args, work: Path, users_file: Path, servers: dict[str, ServerProcess]) -> dict:
    """Recommend on ``--events none`` and on an event store with nothing recorded yet, no ingestion: rounds
    interleaved ABBA."""
    rows: dict[str, list[dict]] = {name: [] for name in servers}
    for pair in range(args.tracking_pairs):
        names = list(servers) if pair % 2 == 0 else list(reversed(servers))
        for name in names:
            server = servers[name]
            assert server.process is not None
            stats = recommend_round(args, work, server.target, users_file,
                                    f"tracking-{name.replace(' ', '-')}-{pair}", args.seed * 10 + pair,
                                    server.process.pid)
            rows[name].append(stats)
            print(f"  {name}: Recommend p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms, "
                  f"{stats['calls_per_s']:,.0f} calls/s, server CPU {stats.get('server_cpu_us_per_call')} us/call, "
                  f"{stats['errors']} errors", flush=True)
    summary = {name: condition_summary(runs) for name, runs in rows.items()}
    return {"in_flight": args.recommend_in_flight, "seconds": args.latency_seconds, "pairs": args.tracking_pairs,
            "rows": summary, "p50_ratio": ratio(summary["events on"]["p50_ms"], summary["events none"]["p50_ms"]),
            "p99_ratio": ratio(summary["events on"]["p99_ms"], summary["events none"]["p99_ms"]),
            "rounds": rows}


def store_part(args, work: Path, server: ServerProcess, store: str, url: str, users_file: Path,
               population_file: Path, pop: Population, db_pids: list[int]) -> dict:
    streams = Streams()
    out: dict[str, Any] = {"store": store}
    try:
        print(f"{store}: throughput, {args.rounds} rounds x {args.round_seconds:g} s, {args.clients} clients x "
              f"{args.in_flight} in flight, batches of {args.batch}...", flush=True)
        out["throughput"] = throughput_rounds(args, work, server, store, population_file, streams, db_pids)
        if not args.skip_latency:
            print(f"{store}: Recommend at {args.recommend_in_flight} in flight without and with "
                  f"{args.ingest_rate:,.0f} interactions/s, {args.latency_pairs} rounds each...", flush=True)
            out["latency"] = latency_rounds(args, work, server, store, users_file, population_file, streams,
                                            db_pids)
        out["status_after"] = fresh_status(server.target)
    finally:
        server.terminate()  # stopped before the check: nothing else reads or writes the store meanwhile
    print(f"{store}: checking every acknowledged interaction in the store...", flush=True)
    out["check"] = check_store(url, streams.sent, pop)
    print(f"  {out['check']['acknowledged']:,} acknowledged, {out['check']['found_once']:,} found once, "
          f"{out['check']['missing']} missing, {out['check']['stored_more_than_once']} twice, "
          f"{out['check']['content_differs']} changed ({out['check']['seconds']} s)", flush=True)
    return out


def fresh_status(target: str) -> dict:
    import grpc

    from movierec.v1 import recommender_pb2, recommender_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        status = recommender_pb2_grpc.RecommenderStub(channel).GetModelStatus(
            recommender_pb2.GetModelStatusRequest(), timeout=10)
    return {"events_followed": status.events_followed, "fresh_users": status.fresh_users,
            "fresh_interactions": status.fresh_interactions, "events_problem": status.events_problem}


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------

def evaluate_targets(report: dict) -> list[dict]:
    targets = []

    def add(name, value, limit, passed, unit=""):
        targets.append({"name": name, "value": value, "limit": limit, "passed": bool(passed), "unit": unit})

    for part in report["stores"]:
        store = part["store"]
        rate = part["throughput"]["median_per_s"]
        add(f"{store}: interactions/s acknowledged (median of {len(part['throughput']['rounds'])})", rate,
            f">= {TARGET_RATE[store]:,.0f}", rate >= TARGET_RATE[store], "/s")
        latency = part.get("latency")
        if latency:
            add(f"{store}: Recommend p99 at {latency['in_flight']} in flight, with / without "
                f"{latency['ingest_rate']:,.0f} interactions/s", latency["p99_ratio"], f"<= {TARGET_P99_RATIO}",
                latency["p99_ratio"] is not None and latency["p99_ratio"] <= TARGET_P99_RATIO, "x")
        check = part["check"]
        bad = check["missing"] + check["stored_more_than_once"] + check["content_differs"]
        add(f"{store}: acknowledged interactions missing, stored twice or changed (of {check['acknowledged']:,})",
            bad, "== 0", check["ok"])
    return targets


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def report_lines(report: dict) -> list[str]:
    m, c = report["model"], report["config"]
    lines = [f"Model: clustered synthetic, {m['movies']:,} movies x {m['users']:,} users (dim {m['dim']}, pooled "
             f"session rule); interactions from {m['users']:,} known users + {m['visitors']:,} visitors; "
             f"recommender --threads {c['threads']}; {report['machine']['cpus']} CPUs; load average "
             f"{report['load_average']['before']} before, {report['load_average']['after']} after", ""]
    lines += [f"Ingestion through gRPC: RecordInteractions, batches of {c['batch']}, {c['clients']} client processes x "
              f"{c['in_flight']} in flight, {c['rounds']} rounds x {c['round_seconds']:g} s, one after another into "
              f"one store (rows stored before each round: "
              + "; ".join(f"{p['store']} " + ", ".join(f"{r['store_rows_before']:,}" for r in p["throughput"]["rounds"])
                          for p in report["stores"]) + ")",
              "",
              "| store | acknowledged/s (median) | per round | call p50 / p99 ms | CPU us per interaction: "
              "recommender / database / clients | machine busy, cores (others') |",
              "|---|---|---|---|---|---|"]
    for part in report["stores"]:
        t = part["throughput"]
        cpu = t["median_cpu_us_per_interaction"]
        database = _fmt(cpu["database"], 1) if part["store"] == "postgresql" and cpu["database"] else "-"
        lines.append(f"| {part['store']} | {t['median_per_s']:,.0f} | "
                     f"{', '.join(_fmt(r['per_s'], 0) for r in t['rounds'])} | "
                     f"{_fmt(median_of([r['call_p50_ms'] for r in t['rounds']]), 1)} / "
                     f"{_fmt(median_of([r['call_p99_ms'] for r in t['rounds']]), 1)} | "
                     f"{_fmt(cpu['recommender'], 1)} / {database} / {_fmt(cpu['clients'], 1)} | "
                     f"{_fmt(t['median_machine_busy_cores'])} ({_fmt(t['median_others_cores'])}) |")
    latency_parts = [p for p in report["stores"] if p.get("latency")]
    if latency_parts:
        first = latency_parts[0]["latency"]
        lines += ["", f"Recommend at {first['in_flight']} in flight, k {c['k']}, without and with "
                      f"{first['ingest_rate']:,.0f} interactions/s ingested (paced), {first['pairs']} rounds each "
                      f"x {first['seconds']:g} s, interleaved; medians of the rounds",
                  "",
                  "| store | ingestion | p50 ms | p99 ms | calls/s | ingested/s | p99 per round | p99 ratio "
                  "| cores: recommender / machine busy (others') |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for part in latency_parts:
            lat = part["latency"]
            for condition in ("without", "with"):
                row = lat[condition]
                lines.append(f"| {part['store']} | {condition} | {_fmt(row['p50_ms'])} | {_fmt(row['p99_ms'])} | "
                             f"{_fmt(row['calls_per_s'], 0)} | "
                             f"{_fmt(row.get('ingested_per_s_median'), 0) if condition == 'with' else '-'} | "
                             f"{', '.join(_fmt(v) for v in row['p99_ms_per_round'])} | "
                             f"{_fmt(lat['p99_ratio'], 2) + 'x' if condition == 'with' else ''} | "
                             f"{_fmt(row['server_cores'])} / {_fmt(row['machine_busy_cores'])} "
                             f"({_fmt(row['others_cores'])}) |")
    tracking = report.get("tracking")
    if tracking:
        lines += ["", f"Recommend at {tracking['in_flight']} in flight, no ingestion: --events none vs an event "
                      f"store (recommendation ids and online-hit tracking), {tracking['pairs']} rounds each x "
                      f"{tracking['seconds']:g} s, interleaved",
                  "",
                  "| recommender | p50 ms | p99 ms | calls/s | server CPU us/call | machine busy cores (others') |",
                  "|---|---|---|---|---|---|"]
        for name, row in tracking["rows"].items():
            lines.append(f"| {name} | {_fmt(row['p50_ms'])} | {_fmt(row['p99_ms'])} | {_fmt(row['calls_per_s'], 0)} "
                         f"| {_fmt(row['server_cpu_us_per_call'], 0)} | {_fmt(row['machine_busy_cores'])} "
                         f"({_fmt(row['others_cores'])}) |")
        lines.append(f"(events on / none: p50 x{_fmt(tracking['p50_ratio'])}, p99 x{_fmt(tracking['p99_ratio'])})")
    lines += ["", "Store check (every acknowledged interaction read back with read_after):"]
    for part in report["stores"]:
        ch = part["check"]
        lines.append(f"  {part['store']}: {ch['acknowledged']:,} acknowledged, {ch['found_once']:,} found exactly once "
                     f"with the content sent, {ch['missing']} missing, {ch['stored_more_than_once']} twice, "
                     f"{ch['content_differs']} changed; {ch['rows_in_store']:,} rows in the store, "
                     f"{ch['stored_without_acknowledgement']} without an acknowledgement ({ch['failed_calls']} failed "
                     f"calls)")
    lines.append("")
    return lines + target_lines(report["targets"], _fmt)


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    work = work_folder(args.work_dir, "movierec-ingestion-bench-")
    started = time.monotonic()
    root = str(work / "models")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    load_before = os.getloadavg()
    report: dict[str, Any] = {"benchmark": "ingestion", "created_at": dt.datetime.now(dt.UTC).isoformat(),
                              "config": {k: v for k, v in vars(args).items() if k not in ("out", "work_dir",
                                                                                         "postgres_url")}}
    try:
        with ExitStack() as stack:
            print(f"Publishing {args.items:,} movies x {args.users:,} users...", flush=True)
            artifact = build_model(args, root)
            population_file = work / "population.json"
            pop_data = population(artifact, args.visitors, args.seed)
            population_file.write_text(json.dumps(pop_data))
            pop = Population(pop_data)
            users_file = work / "users.json"
            users_file.write_text(json.dumps(pop.users))
            report["model"] = {"movies": artifact.num_items, "users": artifact.num_users, "visitors": args.visitors,
                               "dim": args.dim, "seen": int(artifact.seen_indices.size)}
            urls: dict[str, str] = {}
            db_pids: dict[str, list[int]] = {}
            for store in args.stores:
                if store == "sqlite":
                    urls[store], db_pids[store] = f"sqlite:///{work / 'events.sqlite'}", []
                else:
                    database = stack.enter_context(Postgres(args.postgres_url))
                    assert database.url is not None
                    urls[store], db_pids[store] = database.url, database.pids()
            # Every recommender starts now and loads side by side, before anything is measured; each is stopped
            # once its part is done. Until then it idles (a follower reading its store every 0.2 s).
            servers: dict[str, ServerProcess] = {}
            try:
                if not args.skip_tracking:
                    servers["events none"] = launch_recommender("recommender-events-none", root, "none", work,
                                                                args.threads)
                    servers["events on"] = launch_recommender("recommender-events-on", root,
                                                              f"sqlite:///{work / 'tracking.sqlite'}", work,
                                                              args.threads)
                for store in args.stores:
                    servers[store] = launch_recommender(f"recommender-{store}", root, urls[store], work,
                                                        args.threads)
                wait_serving(list(servers.values()))
                if not args.skip_tracking:
                    # A recommender of its own for "events on": the stores' recommenders must start their
                    # throughput rounds as alike as they can, with no recommendations open for judging.
                    print("Tracking cost: --events none vs an event store (SQLite, nothing recorded), no "
                          "ingestion...", flush=True)
                    report["tracking"] = tracking_part(args, work, users_file, {
                        "events none": servers["events none"], "events on": servers["events on"]})
                    stop_all([servers.pop("events none"), servers.pop("events on")])
                report["stores"] = []
                for store in args.stores:
                    report["stores"].append(store_part(args, work, servers[store], store, urls[store], users_file,
                                                       population_file, pop, db_pids[store]))
            finally:
                stop_all(list(servers.values()))
        import grpc

        report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "python": platform.python_version(), "grpcio": grpc.__version__}
        report["load_average"] = {"before": [round(v, 2) for v in load_before],
                                  "after": [round(v, 2) for v in os.getloadavg()]}
        report["wall_seconds"] = round(time.monotonic() - started, 1)
        report["targets"] = evaluate_targets(report)
        report["passed"] = all(t["passed"] for t in report["targets"])
        lines = report_lines(report)
        report["table"] = lines
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print()
        print("\n".join(lines))
        print(f"\n{report['wall_seconds']} s; wrote {args.out}")
        return 0 if all(part["check"]["ok"] for part in report["stores"]) else 1
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
