"""What the feedback-loop benchmarks share (``benchmarks/ingestion.py``, ``benchmarks/freshness.py``).

The model they serve, the users who interact, recommenders and a PostgreSQL
started for them, CPU accounting over a measured window (every process, the
database's, and the whole machine's, so that other people's work on a shared
machine shows), the ingestion clients (``benchmarks/ingestion_load.py``
processes started together), and the check that every acknowledged
interaction is in the store exactly once, as sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repo importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.ingestion_load import Population, batch_content, event_id  # noqa: E402
from benchmarks.serve import wait_for_version  # noqa: E402
from movierec_common.server_process import ServerProcess  # noqa: E402

# Throughput clients build their batches for up to this many interactions/s before their clock starts (the rest
# as they go): building costs the client about 9 us of CPU per interaction, on the cores the server is measured on.
PREBUILD_RATE = 50_000.0


# ----------------------------------------------------------------------------
# Model, population, servers
# ----------------------------------------------------------------------------

def build_model(args, root: str):
    """Publishes version 1 (clustered vectors with the pooled session rule) into ``root``; returns the artifact."""
    from movierec_common import session_query
    from movierec_common.artifact import VersionMetadata
    from tests.artifacts import clustered_artifact
    from trainer_service.publisher import publish

    artifact = clustered_artifact(users=args.users, items=args.items, dim=args.dim, seed=args.seed)
    encoder = session_query.pooled_encoder(artifact.user_vectors, artifact.item_vectors,
                                           (artifact.seen_indptr, artifact.seen_indices))
    publish(root, artifact, VersionMetadata(model_kind="synthetic", query_encoder=encoder.to_json(),
                                            extra={"benchmark": "ingestion"}))
    return artifact


def population(artifact, visitors: int, seed: int) -> dict[str, Any]:
    """Known users and visitors with long-tailed activity; the version's movies by popularity."""
    rng = np.random.default_rng(seed + 1)
    users = [str(u) for u in artifact.user_ids.tolist()] + [f"visitor-{n}" for n in range(visitors)]
    activity = rng.pareto(1.5, size=len(users)) + 1.0
    return Population.build(users, activity, artifact.movie_ids, artifact.popularity.astype(np.float64) + 1.0)


def launch_recommender(name: str, root: str, events: str, work: Path, threads: int) -> ServerProcess:
    """A recommender on ``root`` with ``--events events``, listening when this returns (its version may still be
    loading: see :func:`wait_serving`). It gets SIGTERM if this process dies (end_with_launcher: started from the
    main thread, which outlives it)."""
    server = ServerProcess(name, [sys.executable, "-m", "recommender_service.server", "--port", "0",
                                  "--model-root", root, "--events", events, "--threads", str(threads)],
                           work / f"{name}.log", cwd=REPO_ROOT,
                           end_with_launcher=threading.current_thread() is threading.main_thread())
    return server.start(120)


def stop_all(servers: list[ServerProcess]) -> None:
    """SIGTERM to every one at once (each drains and stops its loader: about 2 s), then waits for each."""
    for server in servers:
        if server.alive() and server.process is not None:
            server.process.terminate()
    for server in servers:
        server.terminate()


def wait_serving(servers: list[ServerProcess]) -> None:
    """Until every one serves version 1 (they load side by side, before anything is measured)."""
    for server in servers:
        wait_for_version(server.target, 1, timeout=180)


class Postgres:
    """The database of the PostgreSQL part: the caller's URL, or a server of the pgserver wheel's binaries
    (tests/postgres.py) started here and destroyed at the end."""

    def __init__(self, url: str | None):
        self.server: Any = None
        self.url = url

    def __enter__(self) -> Postgres:
        if self.url is None:
            from tests.postgres import start_server

            self.server = start_server()
            self.url = self.server.create_schema()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.destroy()

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, WAL writer, checkpointer): the database's CPU."""
        if self.server is None:
            return []
        try:
            return [int((Path(self.server.data_dir) / "postmaster.pid").read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []


# ----------------------------------------------------------------------------
# CPU accounting
# ----------------------------------------------------------------------------

def tree_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their children (as alive now)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for p in [process, *process.children(recursive=True)]:
                with_times = p.cpu_times()
                total += with_times.user + with_times.system
        except psutil.Error:
            continue
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [float(v) for v in handle.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


class CpuWindow:
    """CPU seconds spent by named process groups, and by the machine, between two moments."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}

    def _take(self) -> dict[str, float]:
        taken = {name: tree_cpu(pids) for name, pids in self.groups.items()}
        taken["machine"], taken["machine_total"] = machine_busy()
        return taken

    def begin(self) -> None:
        self.start = self._take()

    def finish(self) -> None:
        self.end = self._take()

    def at(self, begin_at: float, end_at: float) -> threading.Thread:
        """Takes the window from ``begin_at`` to ``end_at`` (monotonic) in a thread of its own."""
        def run() -> None:
            time.sleep(max(0.0, begin_at - time.monotonic()))
            self.begin()
            time.sleep(max(0.0, end_at - time.monotonic()))
            self.finish()

        thread = threading.Thread(target=run, name="cpu-window", daemon=True)
        thread.start()
        return thread

    def seconds(self) -> dict[str, float]:
        used = {name: round(self.end[name] - self.start[name], 3) for name in self.groups}
        used["machine"] = round(self.end["machine"] - self.start["machine"], 3)
        return used


# ----------------------------------------------------------------------------
# Clients
# ----------------------------------------------------------------------------

class IngestClients:
    """``benchmarks/ingestion_load.py`` processes, started together (``go``) and stopped together."""

    def __init__(self, work: Path, tag: str, target: str, population_file: Path, seed: int, streams: list[int], *,
                 batch: int, rate: float, in_flight: int, seconds: float, prebuild: int = 0):
        self.work, self.tag, self.streams = work, tag, streams
        self.outs = [work / f"ingest-{tag}-{stream}.json" for stream in streams]
        self.logs = [work / f"ingest-{tag}-{stream}.log" for stream in streams]
        self.processes: list[subprocess.Popen[bytes]] = []
        for stream, out, log in zip(streams, self.outs, self.logs, strict=True):
            command = [sys.executable, str(BENCH_DIR / "ingestion_load.py"), "--target", target,
                       "--population", str(population_file), "--seed", str(seed), "--stream", str(stream),
                       "--batch", str(batch), "--rate", str(rate), "--in-flight", str(in_flight),
                       "--seconds", str(seconds), "--prebuild", str(prebuild), "--out", str(out)]
            with open(log, "wb") as stderr:
                self.processes.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                       stderr=stderr, cwd=REPO_ROOT))
        for process, log in zip(self.processes, self.logs, strict=True):
            self._expect(process, "ready", log)

    @staticmethod
    def _expect(process: subprocess.Popen[bytes], word: str, log: Path) -> str:
        assert process.stdout is not None
        while True:
            line = process.stdout.readline().decode("utf-8", "replace")
            if not line:
                process.wait(30)
                raise RuntimeError(f"ingestion client exited ({process.returncode}) before '{word}'; see {log}")
            if line.startswith(word):
                return line

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def _send(self, text: str) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(text.encode())
            process.stdin.flush()

    def go(self, delay: float = 0.05) -> float:
        """Starts every client at one moment; returns it (monotonic)."""
        t0 = time.monotonic() + delay
        self._send(f"go {t0:.6f}\n")
        for process, log in zip(self.processes, self.logs, strict=True):
            self._expect(process, "started", log)
        return t0

    def finish(self, stop: bool = False, timeout: float = 120.0) -> list[dict]:
        """Waits for every client (sending ``stop`` first when asked); returns their results."""
        if stop:
            self._send("stop\n")
        results = []
        for process, out, log in zip(self.processes, self.outs, self.logs, strict=True):
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise RuntimeError(f"ingestion client did not finish within {timeout:g} s; see {log}") from None
            if process.returncode != 0:
                raise RuntimeError(f"ingestion client failed ({process.returncode}); see {log}")
            results.append(json.loads(out.read_text()))
        return results

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def prebuild_batches(rate: float, seconds: float, batch: int) -> int:
    """Batches a client builds before it starts: enough for ``rate`` interactions/s over ``seconds``."""
    return int(rate * seconds / batch) + 1


def acknowledged_in(results: list[dict], start: float, end: float) -> dict:
    """Interactions acknowledged with an answer in [start, end), their rate, and the calls' latency there."""
    count, latencies, errors = 0, [], 0
    for r in results:
        answered = np.asarray(r["answered"], dtype=np.float64)
        sent = np.asarray(r["sent"], dtype=np.float64)
        code = np.asarray(r["code"], dtype=np.int64)
        inside = (answered >= start) & (answered < end)
        ok = inside & (code == 0)
        count += int(np.asarray(r["stored"])[ok].sum() + np.asarray(r["duplicates"])[ok].sum())
        latencies.append((answered - sent)[ok])
        errors += int((inside & (code != 0)).sum())
    lat = np.concatenate(latencies) * 1000.0 if latencies else np.zeros(0)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 2) if lat.size else None

    return {"acknowledged": count, "per_s": round(count / max(end - start, 1e-9), 1), "calls": int(lat.size),
            "call_p50_ms": pct(50), "call_p99_ms": pct(99), "errors": errors}


def others_cores(used: dict[str, float], seconds: float) -> float:
    """Busy cores that were not this benchmark's: other people's work on the shared machine."""
    return round(max(0.0, used["machine"] - used["ours"] - used.get("database", 0.0)) / max(seconds, 1e-9), 2)


def merge_errors(results: list[dict]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for r in results:
        for key, count in r.get("error_details", {}).items():
            merged[key] = merged.get(key, 0) + count
    return merged


def check_store(url: str, sent: list[dict], pop: Population) -> dict:
    """Every acknowledged interaction in the store exactly once with the content sent; the rest counted."""
    from movierec_common.event_store import open_store

    started = time.monotonic()
    store = open_store(url)
    assert store is not None
    held: dict[str, list] = {}  # event id -> [times found, user, movie, rating]
    rows = 0
    sequences: set[int] = set()
    try:
        after = 0
        while True:
            page = store.read_after(after, 50_000)
            if not page:
                break
            for row in page:
                i = row.interaction
                entry = held.get(i.event_id)
                if entry is None:
                    held[i.event_id] = [1, i.user_id, i.movie_id, i.rating]
                else:
                    entry[0] += 1
                sequences.add(row.sequence)
            rows += len(page)
            after = page[-1].sequence
    finally:
        store.close()
    acknowledged = missing = twice = changed = not_acknowledged_ok = 0
    examples: list[str] = []
    covered: set[str] = set()
    for result in sent:
        size, seed, stream = result["batch_size"], result["seed"], result["stream"]
        for batch, code, stored, duplicates in zip(result["batch"], result["code"], result["stored"],
                                                   result["duplicates"], strict=True):
            ids = [event_id(seed, stream, batch, j) for j in range(size)]
            if code != 0:
                continue
            acknowledged += size
            if stored + duplicates != size or duplicates:
                changed += size - stored
                if len(examples) < 5:
                    examples.append(f"stream {stream} batch {batch}: acknowledged stored {stored}, "
                                    f"duplicates {duplicates} of {size}")
            users, movies, ratings = batch_content(pop, seed, stream, batch, size)
            for j, key in enumerate(ids):
                covered.add(key)
                entry = held.get(key)
                if entry is None:
                    missing += 1
                    if len(examples) < 5:
                        examples.append(f"{key}: acknowledged, not in the store")
                    continue
                if entry[0] != 1:
                    twice += 1
                want_rating = None if np.isnan(ratings[j]) else float(ratings[j])
                if (entry[1], entry[2], entry[3]) != (users[j], int(movies[j]), want_rating):
                    changed += 1
                    if len(examples) < 5:
                        examples.append(f"{key}: stored {entry[1:]}, sent {(users[j], int(movies[j]), want_rating)}")
        not_acknowledged_ok += sum(1 for code in result["code"] if code != 0)
    extra = sum(1 for key in held if key not in covered)
    return {"rows_in_store": rows, "distinct_sequences": len(sequences), "distinct_event_ids": len(held),
            "acknowledged": acknowledged, "found_once": acknowledged - missing - twice, "missing": missing,
            "stored_more_than_once": twice, "content_differs": changed,
            "stored_without_acknowledgement": extra, "failed_calls": not_acknowledged_ok,
            "examples": examples, "seconds": round(time.monotonic() - started, 1),
            "ok": missing == 0 and twice == 0 and changed == 0 and len(sequences) == rows}
