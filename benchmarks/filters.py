"""Filters and hidden movies, end to end: what a filtered call costs and whether its answer is right.

One run, three parts (the targets are issue 18's):

* **(a) A million movies through the real services.** Clustered synthetic
  vectors (``tests.artifacts.clustered_artifact``, as ``ann_serving.py``) with
  metadata that follows the clusters, as real genres do: each cluster holds 1
  to 3 of 20 genres as its own (a movie of the cluster has each with p 0.85,
  any other genre with p 0.004), so a genre removes whole regions of the
  vector space, where plain IVF probing fails; and each cluster has its own
  era (years spread +-6 around it, 3% unknown), so a year range does too. The
  trainer's own index code and ``publish()`` write the version; a real
  recommender process serves it. The filter classes: none, one genre (~10%
  pass), two genres with AND (~1%), ``only_movie_ids`` of 500 random movies
  and ``exclude_movie_ids`` of 10,000 random movies (both new per call), a
  year range (~30%). For each class, in one run: p50/p99 at 1 call in flight
  over loopback gRPC, distinct known users, sent by
  ``benchmarks/filter_load.py`` in its own process; recall@10 against the
  exact filtered answer (numpy over the artifact, seen movies excluded, the
  filter applied by this script's own code, not the server's) for the first
  ``--check-users`` calls; and **every** answer checked: no movie failing the
  filter or seen, no repeat, exactly min(k, eligible) movies, and the
  response's ``eligible_movies`` equal to the count computed here. The same
  requests then go to ``benchmarks/echo_server.py`` (a constant answer): what
  sending each class's request costs with no recommender behind it.
* **(b) MovieLens 100K.** A real trainer job (``--ml-model``, default
  ``two_tower``) publishes a version with the GroupLens genres and years;
  p50 of filtered calls (one genre, a year range, 20 excluded ids new per
  call) beside unfiltered ones, interleaved in rounds, each round a pass over
  every user with its own k (10, 11, ...), so no (user, k) repeats and the
  answer cache never answers the unfiltered calls.
* **(c) Hidden movies across replicas.** The same trainer and 3 recommender
  replicas on its model root (``--poll-seconds``, default 1 s, the server's
  default). ``HideMovies`` hides the current top answers of a few users on
  every replica; the time from its return until each replica both reports
  the new ``hidden_sequence`` and answers those users without a hidden movie
  is the convergence. Then a few seconds of load rotating over the replicas,
  users (a stranger too), k, ``exclude_seen`` and filters; every answer
  holding a hidden movie is counted.

Run ``python benchmarks/filters.py`` (about 4 minutes on 2 cores at the
default 1,000,000 movies x 50,000 users, a few GB; ``--tiny`` runs 20,000
movies and ``ease`` in about 35 s). It prints the tables and PASS/FAIL per
target, and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repo importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.filter_load import Phase  # noqa: E402
from benchmarks.filter_oracle import (  # noqa: E402
    GENRE_NAMES,
    PROBLEMS,
    Oracle,
    closest_genre,
    closest_pair,
    item_clusters,
    synthetic_metadata,
    year_range,
)
from benchmarks.report import target_lines, work_folder  # noqa: E402
from benchmarks.serve import DEFAULT_MOVIELENS, wait_for_version  # noqa: E402
from movierec_common.server_process import ServerProcess  # noqa: E402

# The targets.
TARGET_RECALL_AT_10 = 0.95
TARGET_P99_MS = 2.0
TARGET_ML_P50_DELTA_MS = 0.1
TARGET_HIDDEN_EXTRA_S = 1.0  # one poll plus this

TOKEN = "filters-benchmark-token-0123456789"
STRANGER = "filters-benchmark-stranger"  # an unknown user: a cold-start answer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per filter class")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each class")
    parser.add_argument("--check-users", type=int, default=300, help="calls per class whose recall is measured")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--only-ids", type=int, default=500, help="only_movie_ids per call, drawn anew each call")
    parser.add_argument("--exclude-ids", type=int, default=10_000,
                        help="exclude_movie_ids per call, drawn anew each call")
    parser.add_argument("--ranking-mb", type=float, default=256.0, help="the synthetic recommender's --ranking-mb")
    parser.add_argument("--ann-min-items", type=int, default=None,
                        help="index threshold (default: the trainer's); the catalogue must reach it")
    parser.add_argument("--movielens-dir", default=os.environ.get("MOVIELENS_DIR", str(DEFAULT_MOVIELENS)))
    parser.add_argument("--ml-model", default="two_tower", help="the MovieLens 100K job's model kind")
    parser.add_argument("--ml-epochs", type=int, default=None, help="the job's epochs (default: the kind's)")
    parser.add_argument("--ml-rounds", type=int, default=3, help="passes over every user per MovieLens class")
    parser.add_argument("--ml-no-refit", dest="ml_refit", action="store_false",
                        help="publish the evaluated model (no second training on all the data)")
    parser.add_argument("--ml-warmup-calls", type=int, default=200, help="unmeasured calls per MovieLens class")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="the replicas' --poll-seconds")
    parser.add_argument("--hidden-users", type=int, default=5, help="users whose top answers are hidden")
    parser.add_argument("--hide-top", type=int, default=3, help="hide each such user's top N on every replica")
    parser.add_argument("--hidden-load-seconds", type=float, default=5.0)
    parser.add_argument("--no-echo", dest="echo", action="store_false",
                        help="do not send the synthetic classes' requests to an echo server as well")
    parser.add_argument("--skip-synthetic", action="store_true", help="parts (b) and (c) only")
    parser.add_argument("--skip-movielens", action="store_true", help="part (a) only")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "filters.json"))
    parser.add_argument("--work-dir", default=None, help="keep the model roots and logs here (default: temp, removed)")
    parser.add_argument("--tiny", action="store_true",
                        help="20,000 movies x 2,000 users, half a second per class, ease on MovieLens 100K")
    args = parser.parse_args(argv)
    if args.tiny:
        args.items, args.users = min(args.items, 20_000), min(args.users, 2_000)
        args.seconds, args.warmup = min(args.seconds, 0.5), min(args.warmup, 0.2)
        args.check_users = min(args.check_users, 100)
        args.exclude_ids = min(args.exclude_ids, 2_000)  # 10,000 would exclude half the tiny catalogue
        args.ml_warmup_calls = min(args.ml_warmup_calls, 50)
        args.ann_min_items = args.ann_min_items or 10_000
        args.ml_rounds = min(args.ml_rounds, 1)
        args.hidden_load_seconds = min(args.hidden_load_seconds, 1.0)
        if args.ml_model == "two_tower":
            args.ml_model = "ease"
        args.ml_refit = False
    return args


# ----------------------------------------------------------------------------

def run_filter_load(work: Path, targets: list[str], phases: list[dict], tag: str,
                    movie_ids_file: Path | None = None) -> list[dict]:
    """Runs benchmarks/filter_load.py to completion over ``phases``; returns its phases' results."""
    plan_path, out = work / f"filter-load-{tag}-plan.json", work / f"filter-load-{tag}.json"
    plan_path.write_text(json.dumps({"targets": targets, "phases": phases,
                                     "movie_ids_file": str(movie_ids_file) if movie_ids_file else None}))
    with open(work / f"filter-load-{tag}.log", "wb") as log:
        code = subprocess.run([sys.executable, str(BENCH_DIR / "filter_load.py"), "--plan", str(plan_path),
                               "--out", str(out)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT).returncode
    if code != 0:
        raise RuntimeError(f"the filter load generator failed ({code}); see {work / f'filter-load-{tag}.log'}")
    return json.loads(out.read_text())["phases"]


def latency(calls: list[dict]) -> dict:
    """p50/p99/max (ms) of the measured successful calls."""
    measured = [c for c in calls if c["measured"]]
    ok = np.array([c["latency"] for c in measured if c["code"] == 0]) * 1000.0

    def pct(q: float) -> float | None:
        return round(float(np.percentile(ok, q)), 3) if ok.size else None

    return {"p50_ms": pct(50), "p99_ms": pct(99), "max_ms": round(float(ok.max()), 3) if ok.size else None,
            "calls": len(measured), "errors": sum(1 for c in measured if c["code"] != 0)}


NO_MOVIES = np.zeros(0, dtype=np.int64)


def check_phase(oracle: Oracle, spec: dict, result: dict, hidden: np.ndarray = NO_MOVIES,
                recall_calls: int = 0) -> dict:
    """Every answer of a phase (warm-up included) checked; recall of its first ``recall_calls`` answers."""
    phase = Phase(spec, None)
    totals = dict.fromkeys(PROBLEMS, 0)
    examples: list[str] = []
    checked: list[dict] = []
    for record in result["calls"]:
        target, exclude, number, k, user = phase.choice(record["i"])
        found, facts = oracle.check(phase.filters[number], phase.seed, record, user, exclude, k, hidden)
        for name, count in found.items():
            totals[name] += count
        if any(found.values()) and len(examples) < 5:
            kinds = ", ".join(name for name, count in found.items() if count)
            examples.append(f"call {record['i']} (user {user}, k {k}, filter {phase.filters[number]!s:.80}): "
                            f"{kinds}; served {record.get('ids', [])[:10]}, eligible {record.get('eligible')} "
                            f"vs {facts.get('eligible')}; {record.get('error', '')}")
        if facts and len(checked) < recall_calls:
            checked.append(facts)
    out: dict[str, Any] = {"answers_checked": len(result["calls"]), "problems": totals, "examples": examples}
    if recall_calls:
        recalls = oracle.recalls(phase.filters[0], checked, phase.ks[0])
        out.update(recall_users=len(recalls),
                   recall_at_10=round(float(np.mean(recalls)), 4) if recalls else None,
                   min_recall_at_10=round(float(np.min(recalls)), 2) if recalls else None)
    return out


# ----------------------------------------------------------------------------
# Servers
# ----------------------------------------------------------------------------

class Servers:
    """The benchmark's servers, started side by side and stopped together.

    Each is started by a thread of its own that then waits until the end:
    ``end_with_launcher`` gives a server SIGTERM when the thread that started
    it ends (or this process dies, however it dies), so a killed benchmark
    leaves no server behind, and the threads must outlive their servers.
    """

    def __init__(self, work: Path):
        self.work = work
        self.started: dict[str, ServerProcess] = {}
        self._end = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, specs: list[tuple[str, str, list[str], dict | None]]) -> dict[str, ServerProcess]:
        """Starts ``(name, module, args, env)`` servers at once; returns them by name once all listen."""
        ready: dict[str, threading.Event] = {}
        failures: list[str] = []

        def hold(server: ServerProcess, done: threading.Event) -> None:
            try:
                server.start(120)
            except Exception as exc:  # reported by the caller, with the server's log
                failures.append(f"{server.name}: {exc}")
            finally:
                done.set()
            self._end.wait()

        for name, module, args, env in specs:
            command = [sys.executable, "-m", module, "--port", "0", *args]
            server = ServerProcess(name, command, self.work / f"{name}.log", env, cwd=REPO_ROOT,
                                   end_with_launcher=True)
            self.started[name] = server
            ready[name] = threading.Event()
            thread = threading.Thread(target=hold, args=(server, ready[name]), name=f"holds-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        for done in ready.values():
            done.wait(150)
        if failures or not all(done.is_set() for done in ready.values()):
            raise RuntimeError(f"servers did not start: {failures or 'timeout'}")
        return {name: self.started[name] for name in ready}

    def stop(self, names: list[str] | None = None) -> None:
        chosen = [s for n, s in self.started.items() if names is None or n in names]
        for server in chosen:
            if server.alive() and server.process is not None:
                server.process.terminate()  # all stop side by side
        for server in chosen:
            server.terminate()
        if names is None:
            self._end.set()
            for thread in self._threads:
                thread.join(5)


# ----------------------------------------------------------------------------
# (a) A million movies
# ----------------------------------------------------------------------------

@dataclass
class FilterClass:
    kind: str  # stable: none, genre, two_genres, only_ids, exclude_ids, years
    name: str  # for people: says which genres, years, how many ids
    spec: dict | None
    passing_share: float


def synthetic_part(args, work: Path, server: ServerProcess, root: str, before_measuring=None,
                   echo: ServerProcess | None = None) -> dict:
    """``before_measuring()``: called once the version is served, before the first measured call.
    ``echo``: ``benchmarks/echo_server.py``, sent the same requests afterwards: what each class's request
    costs over gRPC with nothing behind it (10,000 ids are a 37 KB message)."""
    from benchmarks.ann_serving import build_artifact, build_index
    from movierec_common import movie_metadata
    from movierec_common.artifact import VersionMetadata
    from trainer_service.publisher import publish

    print(f"(a) Generating {args.items:,} movies x {args.users:,} users...", flush=True)
    artifact, generate_s = build_artifact(args)
    cluster = item_clusters(artifact, args.seed)
    bits, years = synthetic_metadata(cluster, args.seed)
    print(f"  {generate_s} s; building the index...", flush=True)
    files, retrieval, index_s = build_index(args, artifact)
    print(f"  {index_s} s: nlist {retrieval['nlist']}, nprobe {retrieval['nprobe']}; publishing...", flush=True)
    meta_files, record = movie_metadata.files_for_version(
        movie_metadata.MovieMetadata.build(GENRE_NAMES, bits, years))
    started = time.monotonic()
    version = publish(root, artifact, VersionMetadata(model_kind="synthetic", retrieval=retrieval, movies=record,
                                                      extra={"benchmark": "filters"}), {**files, **meta_files})
    index_info = {k: retrieval[k] for k in ("kind", "nlist", "nprobe", "calibration_recall_at_10") if k in retrieval}
    index_info["file_mb"] = round(sum(len(b) for b in files.values()) / 2**20, 1)
    del files
    wait_for_version(server.target, version, timeout=900)
    publish_to_served = round(time.monotonic() - started, 1)
    print(f"  served {publish_to_served} s after publish() began", flush=True)

    if before_measuring is not None:
        before_measuring()
    oracle = Oracle(artifact, GENRE_NAMES, bits, years)
    genre = closest_genre(bits, 0.10)
    pair = closest_pair(bits, 0.01)
    low, high = year_range(years, 0.30)
    items = artifact.num_items
    classes = [
        FilterClass("none", "none", None, 1.0),
        FilterClass("genre", f"one genre ({genre})", {"genres_any": [genre]}, 0.0),
        FilterClass("two_genres", f"two genres AND ({pair[0]} + {pair[1]})", {"genres_all": list(pair)}, 0.0),
        FilterClass("only_ids", f"only_movie_ids: {args.only_ids:,} random",
                    {"random": {"field": "only_movie_ids", "count": args.only_ids}}, min(args.only_ids, items) / items),
        FilterClass("exclude_ids", f"exclude_movie_ids: {args.exclude_ids:,} random",
                    {"random": {"field": "exclude_movie_ids", "count": args.exclude_ids}},
                    1 - min(args.exclude_ids, items) / items),
        FilterClass("years", f"years {low}-{high}", {"min_year": low, "max_year": high}, 0.0),
    ]
    for c in classes:
        if c.spec and "random" not in c.spec:
            c.passing_share = oracle.static_mask(c.spec)[1] / items

    movie_ids_file = work / "synthetic-movie-ids.npy"
    np.save(movie_ids_file, artifact.movie_ids)
    order = np.random.default_rng(args.seed).permutation(artifact.num_users)
    users = [str(artifact.user_ids[u]) for u in order.tolist()]
    phases = []
    for number, c in enumerate(classes):
        # Each class starts at its own place in the user list and stops before it comes round again:
        # every call asks a user the class has not asked (unfiltered answers are cached per user and k).
        phases.append({"name": c.name, "users": users, "offset": number * len(users) // len(classes),
                       "ks": [args.k], "filters": [c.spec], "seed": args.seed * 1000 + number,
                       "seconds": args.seconds, "warmup": args.warmup, "calls": len(users), "concurrency": 1})
    print(f"  {len(classes)} classes x ({args.warmup} + {args.seconds}) s at 1 in flight...", flush=True)
    load_before = os.getloadavg()[0]
    results = run_filter_load(work, [server.target], phases, "synthetic", movie_ids_file)
    load_after = os.getloadavg()[0]
    echoed: list[dict | None] = [None] * len(phases)
    if echo is not None:
        echo_seconds = min(3.0, args.seconds / 3)
        print(f"  the same requests to the echo server, {echo_seconds:g} s each...", flush=True)
        echoed = run_filter_load(work, [echo.target], [{**p, "seconds": echo_seconds, "warmup": min(args.warmup, 0.2)}
                                                       for p in phases], "echo", movie_ids_file)
    rows = []
    for c, spec, result, baseline in zip(classes, phases, results, echoed, strict=True):
        print(f"  checking {c.name}...", flush=True)
        row = {"kind": c.kind, "class": c.name, "filter": c.spec, "passing_share": round(c.passing_share, 4),
               **latency(result["calls"]), **check_phase(oracle, spec, result, recall_calls=args.check_users)}
        row["error_details"] = result["error_details"]
        if baseline is not None:
            transport = latency(baseline["calls"])
            row["echo"] = {"p50_ms": transport["p50_ms"], "p99_ms": transport["p99_ms"], "calls": transport["calls"]}
        rows.append(row)
        print(f"    p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, recall@10 {row['recall_at_10']}, "
              f"problems {sum(row['problems'].values())}", flush=True)
    return {
        "model": {"num_users": artifact.num_users, "num_items": items, "dim": int(artifact.item_vectors.shape[1]),
                  "genres": len(GENRE_NAMES), "generate_seconds": generate_s},
        "index": {**index_info, "files_for_version_seconds": index_s},
        "publish_to_served_s": publish_to_served,
        "ranking_mb": args.ranking_mb,
        # the machine's 1-minute load average around the measured calls: others' work on the same cores
        "load_average": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "rows": rows,
    }


# ----------------------------------------------------------------------------
# (b) MovieLens 100K and (c) hidden movies
# ----------------------------------------------------------------------------

def movielens_oracle(root: str, version: int) -> Oracle:
    from movierec_common import artifact as artifact_format
    from movierec_common.model_root import version_dir

    path = version_dir(root, version)
    art, _ = artifact_format.load(path)
    movies = artifact_format.read_metadata(path).movies
    if movies is None:
        raise RuntimeError(f"version {version} has no movie metadata: the trainer did not write genres and years")
    bits = np.load(os.path.join(path, movies.genres_file), allow_pickle=False)
    years = np.load(os.path.join(path, movies.years_file), allow_pickle=False)
    return Oracle(art, tuple(movies.genres), bits, years)


def movielens_classes(oracle: Oracle) -> list[FilterClass]:
    genre = "Comedy" if "Comedy" in oracle.genre_names else oracle.genre_names[0]
    classes = [FilterClass("none", "none", None, 1.0),
               FilterClass("genre", f"one genre ({genre})", {"genres_any": [genre]}, 0.0),
               FilterClass("years", "years 1990-1999", {"min_year": 1990, "max_year": 1999}, 0.0),
               FilterClass("exclude_ids", "exclude_movie_ids: 20 random",
                           {"random": {"field": "exclude_movie_ids", "count": 20}}, 1 - 20 / oracle.num_items)]
    for c in classes[1:3]:
        c.passing_share = oracle.static_mask(c.spec)[1] / oracle.num_items
    return classes


def movielens_part(args, work: Path, replica: ServerProcess, oracle: Oracle, movie_ids_file: Path) -> dict:
    classes = movielens_classes(oracle)
    users = list(oracle.user_index)
    rng = np.random.default_rng(args.seed + 3)
    phases, index = [], []
    for number, c in enumerate(classes):  # warm-up: k one below any measured k, so no answer is kept for them
        if args.ml_warmup_calls <= 0:
            break
        phases.append({"name": f"warm-up {c.name}", "users": [users[u] for u in rng.permutation(len(users))],
                       "ks": [args.k - 1], "filters": [c.spec], "seed": args.seed * 1000 + 900 + number,
                       "calls": min(args.ml_warmup_calls, len(users)),
                       "warmup_calls": min(args.ml_warmup_calls, len(users))})
        index.append((None, number))
    for round_number in range(args.ml_rounds):
        for number, c in enumerate(classes):  # interleaved, so drift on a shared machine hits every class alike
            phases.append({"name": f"round {round_number} {c.name}",
                           "users": [users[u] for u in rng.permutation(len(users))],
                           "ks": [args.k + round_number], "filters": [c.spec],
                           "seed": args.seed * 1000 + 100 * round_number + number, "calls": len(users)})
            index.append((round_number, number))
    print(f"(b) MovieLens 100K: {len(classes)} classes x {args.ml_rounds} rounds x {len(users)} users...", flush=True)
    load_before = os.getloadavg()[0]
    results = run_filter_load(work, [replica.target], phases, "movielens", movie_ids_file)
    load_after = os.getloadavg()[0]
    rows = []
    for number, c in enumerate(classes):
        calls, problems = [], dict.fromkeys(PROBLEMS, 0)
        examples: list[str] = []
        per_round = []
        recall: list[float] = []
        for (round_number, class_number), spec, result in zip(index, phases, results, strict=True):
            if class_number != number:
                continue
            checked = check_phase(oracle, spec, result, recall_calls=0 if round_number is None else 100)
            for name, count in checked["problems"].items():
                problems[name] += count
            examples += checked["examples"][:2]
            if round_number is not None:
                calls += result["calls"]
                per_round.append(latency(result["calls"])["p50_ms"])
                if checked.get("recall_at_10") is not None:
                    recall.append(checked["recall_at_10"])
        rows.append({"kind": c.kind, "class": c.name, "filter": c.spec, "passing_share": round(c.passing_share, 4),
                     **latency(calls), "p50_ms_per_round": per_round,
                     "recall_at_10": round(float(np.mean(recall)), 4) if recall else None,
                     "answers_checked": len(calls), "problems": problems, "examples": examples[:5]})
    unfiltered = rows[0]["p50_ms"]
    for row in rows:
        row["p50_minus_unfiltered_ms"] = round(row["p50_ms"] - unfiltered, 3) if row["p50_ms"] is not None else None
    return {"users": len(users), "movies": oracle.num_items, "rounds": args.ml_rounds, "rows": rows,
            "load_average": {"before": round(load_before, 2), "after": round(load_after, 2)}}


def _status(target: str):
    import grpc

    from movierec.v1 import recommender_pb2, recommender_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        return recommender_pb2_grpc.RecommenderStub(channel).GetModelStatus(
            recommender_pb2.GetModelStatusRequest(), timeout=10)


class ConvergenceWatcher(threading.Thread):
    """After ``go`` is set: polls one replica's status and its answers for the probe users until the status
    shows ``sequence`` and no answer holds a hidden movie; records when each first held."""

    def __init__(self, target: str, users: list[str], k: int, hidden: set[int], timeout: float):
        super().__init__(daemon=True)
        self.target, self.users, self.k, self.hidden, self.timeout = target, users, k, hidden, timeout
        self.go = threading.Event()
        self.t0 = 0.0
        self.sequence = 0
        self.status_s: float | None = None
        self.answers_s: float | None = None
        self.converged_s: float | None = None
        self.rounds = 0

    def run(self) -> None:
        import grpc

        from movierec.v1 import recommender_pb2, recommender_pb2_grpc

        with grpc.insecure_channel(self.target) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            requests = [recommender_pb2.RecommendRequest(user_id=u, k=self.k) for u in self.users]
            stub.GetModelStatus(recommender_pb2.GetModelStatusRequest(), timeout=10)  # connected before the hide
            self.go.wait()
            while time.monotonic() - self.t0 < self.timeout:
                status = stub.GetModelStatus(recommender_pb2.GetModelStatusRequest(), timeout=10)
                shows = status.hidden_sequence >= self.sequence
                clean = all(not self.hidden & {item.movie_id for item in stub.Recommend(r, timeout=10).items}
                            for r in requests)
                now = time.monotonic() - self.t0
                self.rounds += 1
                if shows and self.status_s is None:
                    self.status_s = round(now, 3)
                if clean and self.answers_s is None:
                    self.answers_s = round(now, 3)
                if shows and clean:
                    self.converged_s = round(now, 3)
                    return
                time.sleep(0.005)


def hidden_part(args, work: Path, trainer: ServerProcess, replicas: list[ServerProcess], oracle: Oracle,
                movie_ids_file: Path) -> dict:
    from clients import RecommenderClient, TrainerClient

    rng = np.random.default_rng(args.seed + 5)
    users = list(oracle.user_index)
    probes = [users[u] for u in rng.choice(len(users), size=min(args.hidden_users, len(users)), replace=False)]
    to_hide: set[int] = set()
    for replica in replicas:  # every replica's current top answers, so the hiding is visible on each
        with RecommenderClient(replica.target, timeout=10) as rc:
            for user in probes:
                to_hide.update(item.movie_id for item in rc.recommend(user, k=args.k).items[:args.hide_top])
    before = [_status(r.target).hidden_sequence for r in replicas]
    timeout = 30.0 + args.poll_seconds * 5
    watchers = [ConvergenceWatcher(r.target, probes, args.k, to_hide, timeout) for r in replicas]
    for watcher in watchers:
        watcher.start()
    time.sleep(0.5)  # every watcher connected and waiting
    print(f"(c) Hiding {len(to_hide)} movies (the top {args.hide_top} of {len(probes)} users)...", flush=True)
    with TrainerClient(trainer.target, timeout=30, token=TOKEN) as tc:
        hidden = tc.hide_movies(sorted(to_hide))
    t0 = time.monotonic()
    for watcher in watchers:
        watcher.t0, watcher.sequence = t0, hidden.sequence
        watcher.go.set()
    for watcher in watchers:
        watcher.join(timeout + 10)
    per_replica = [{"replica": r.name, "sequence_before": b, "status_s": w.status_s, "answers_s": w.answers_s,
                    "converged_s": w.converged_s, "probe_rounds": w.rounds}
                   for r, b, w in zip(replicas, before, watchers, strict=True)]
    converged = [w.converged_s for w in watchers]
    worst = max(converged) if all(c is not None for c in converged) else None
    print(f"  converged after {worst} s (each: {converged}); load across {len(replicas)} replicas...", flush=True)

    hidden_positions = oracle.indices(sorted(to_hide))
    hidden_positions = np.unique(hidden_positions[hidden_positions >= 0])
    classes = movielens_classes(oracle)
    load_phase = {"name": "load after hiding", "users": [*users, STRANGER], "targets": len(replicas),
                  "exclude_seen": [True, False, None], "filters": [c.spec for c in classes],
                  "ks": [1, args.k, 37, 100, 150], "seed": args.seed * 1000 + 777,
                  "seconds": args.hidden_load_seconds, "concurrency": 2}
    result = run_filter_load(work, [r.target for r in replicas], [load_phase], "hidden", movie_ids_file)[0]
    checked = check_phase(oracle, load_phase, result, hidden=hidden_positions)
    holding = sum(1 for c in result["calls"] if c["code"] == 0 and to_hide & set(c["ids"]))
    return {"poll_seconds": args.poll_seconds, "replicas": len(replicas), "hidden_movies": len(hidden.movie_ids),
            "sequence": hidden.sequence, "probe_users": len(probes), "per_replica": per_replica,
            "convergence_s": worst,
            "load": {"seconds": args.hidden_load_seconds, "calls": len(result["calls"]),
                     "answers_holding_hidden": holding,
                     "errors": sum(1 for c in result["calls"] if c["code"] != 0),
                     "answers_checked": checked["answers_checked"], "problems": checked["problems"],
                     "examples": checked["examples"], "error_details": result["error_details"]}}


def movielens_specs(args, work: Path) -> tuple[str, list]:
    """(the MovieLens model root, the trainer's and the replicas' server specs)."""
    if not (Path(args.movielens_dir) / "u.data").is_file():
        raise SystemExit(f"MovieLens 100K not found at {args.movielens_dir}: set MOVIELENS_DIR or --movielens-dir")
    root = str(work / "ml-models")
    os.makedirs(root, exist_ok=True)
    specs = [("trainer", "trainer_service.server", ["--model-root", root, "--movielens-dir", str(args.movielens_dir)],
              {"MOVIEREC_TOKENS": TOKEN})]
    specs += [(f"replica{n}", "recommender_service.server", ["--model-root", root, "--poll-seconds",
                                                              str(args.poll_seconds)], None)
              for n in range(args.replicas)]
    return root, specs


def submit_movielens_job(args, trainer: ServerProcess) -> str:
    from clients import TrainerClient

    with TrainerClient(trainer.target, timeout=30, token=TOKEN) as tc:
        return tc.train(args.ml_model, epochs=args.ml_epochs, seed=args.seed, quality_gate_disabled=True,
                        refit=None if args.ml_refit else False).id


def wait_for_movielens(args, trainer: ServerProcess, replicas: list, job_id: str) -> dict:
    from clients import TrainerClient

    started = time.monotonic()
    with TrainerClient(trainer.target, timeout=30, token=TOKEN) as tc:
        job = tc.wait_for_job(job_id, timeout=1800)
    if not job.published or not job.model_version:
        raise RuntimeError(f"the MovieLens job did not publish: {job.state} {job.error or job.not_published_reason}")
    for replica in replicas:
        wait_for_version(replica.target, job.model_version, timeout=300)
    return {"model": args.ml_model, "version": job.model_version,
            "job_seconds": round(job.metrics.get("train_seconds", 0.0), 1),
            "waited_seconds": round(time.monotonic() - started, 1),
            "recall_at_10_heldout": round(job.metrics.get("recall_at_10", 0.0), 4)}


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------

def evaluate_targets(report: dict) -> list[dict]:
    targets = []

    def add(name, value, limit, passed, unit=""):
        targets.append({"name": name, "value": value, "limit": limit, "passed": bool(passed), "unit": unit})

    for row in (report.get("synthetic") or {}).get("rows", []):
        name = row["class"]
        add(f"recall@10 vs exact filtered, {name}", row["recall_at_10"], f">= {TARGET_RECALL_AT_10}",
            row["recall_at_10"] is not None and row["recall_at_10"] >= TARGET_RECALL_AT_10)
        add(f"p99 at 1 in flight, {name}", row["p99_ms"], f"<= {TARGET_P99_MS}",
            row["p99_ms"] is not None and row["p99_ms"] <= TARGET_P99_MS, "ms")
        add(f"answers holding a movie failing the filter, {name}", row["problems"]["fails_filter"], "== 0",
            row["problems"]["fails_filter"] == 0)
        other = sum(v for k, v in row["problems"].items() if k != "fails_filter")
        add(f"answers not exactly min(k, eligible) / seen / repeated / failed, {name}", other, "== 0", other == 0)
    ml = report.get("movielens")
    if ml:
        for row in ml["rows"][1:]:
            delta = row["p50_minus_unfiltered_ms"]
            add(f"MovieLens 100K p50 filtered - unfiltered, {row['class']}", delta, f"<= {TARGET_ML_P50_DELTA_MS}",
                delta is not None and delta <= TARGET_ML_P50_DELTA_MS, "ms")
        bad = sum(sum(row["problems"].values()) for row in ml["rows"])
        add("MovieLens 100K answers with a problem (filter, count, seen, errors)", bad, "== 0", bad == 0)
    hidden = report.get("hidden")
    if hidden:
        limit = hidden["poll_seconds"] + TARGET_HIDDEN_EXTRA_S
        value = hidden["convergence_s"]
        add(f"hidden movies: HideMovies -> all {hidden['replicas']} replicas applied", value, f"<= {limit}",
            value is not None and value <= limit, "s")
        load = hidden["load"]
        add("hidden movies: answers holding one under load", load["answers_holding_hidden"], "== 0",
            load["answers_holding_hidden"] == 0 and load["problems"]["hidden"] == 0)
        bad = sum(v for k, v in load["problems"].items() if k != "hidden")
        add("hidden movies: other problems under load (filter, count, seen, errors)", bad, "== 0", bad == 0)
    return targets


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def report_lines(report: dict) -> list[str]:
    lines: list[str] = []
    synthetic = report.get("synthetic")
    if synthetic:
        m, ix = synthetic["model"], synthetic["index"]
        lines += [f"(a) Synthetic catalogue: {m['num_items']:,} movies x {m['num_users']:,} users, dim {m['dim']}, "
                  f"{m['genres']} genres following the clusters; index {ix.get('kind')} nlist {ix.get('nlist')} "
                  f"nprobe {ix.get('nprobe')}; recommender --ranking-mb {synthetic['ranking_mb']:g}; "
                  f"1 call in flight, distinct known users, k 10, {report['config']['seconds']:g} s per class; "
                  f"machine load average {synthetic['load_average']['before']} before, "
                  f"{synthetic['load_average']['after']} after ({report['machine']['cpus']} CPUs)",
                  "",
                  "| filter class | passing | recall@10 (min) | p50 ms | p99 ms | max ms | calls | answers checked "
                  "| failing filter | other problems | echo p50 / p99 ms |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in synthetic["rows"]:
            other = sum(v for k, v in row["problems"].items() if k != "fails_filter")
            echo = row.get("echo") or {}
            lines.append(f"| {row['class']} | {row['passing_share'] * 100:.2f}% | {_fmt(row['recall_at_10'], 3)} "
                         f"({_fmt(row['min_recall_at_10'])}) | {_fmt(row['p50_ms'])} | {_fmt(row['p99_ms'])} "
                         f"| {_fmt(row['max_ms'])} | {row['calls']:,} | {row['answers_checked']:,} "
                         f"| {row['problems']['fails_filter']} | {other} "
                         f"| {_fmt(echo.get('p50_ms'))} / {_fmt(echo.get('p99_ms'))} |")
        if any(row.get("echo") for row in synthetic["rows"]):
            lines.append("(echo: the same requests, one in flight, to benchmarks/echo_server.py, which answers a "
                         "constant list: what sending the request costs with no recommender behind it)")
        lines.append("")
    ml = report.get("movielens")
    if ml:
        job = report.get("movielens_job", {})
        lines += [f"(b) MovieLens 100K ({job.get('model')} version {job.get('version')}, {ml['movies']:,} movies, "
                  f"exact backend): {ml['rounds']} rounds x {ml['users']} users per class, 1 in flight; "
                  f"load average {ml['load_average']['before']} before, {ml['load_average']['after']} after",
                  "",
                  "| filter class | passing | p50 ms | p99 ms | p50 - unfiltered ms | p50 per round | calls "
                  "| answers with a problem |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in ml["rows"]:
            lines.append(f"| {row['class']} | {row['passing_share'] * 100:.1f}% | {_fmt(row['p50_ms'], 3)} "
                         f"| {_fmt(row['p99_ms'], 3)} | {_fmt(row['p50_minus_unfiltered_ms'], 3)} "
                         f"| {', '.join(_fmt(p, 3) for p in row['p50_ms_per_round'])} | {row['calls']:,} "
                         f"| {sum(row['problems'].values())} |")
        lines.append("")
    hidden = report.get("hidden")
    if hidden:
        each = "; ".join(f"{r['replica']}: status {_fmt(r['status_s'])} s, answers {_fmt(r['answers_s'])} s"
                         for r in hidden["per_replica"])
        load = hidden["load"]
        lines += [f"(c) Hidden movies: {hidden['hidden_movies']} hidden (sequence {hidden['sequence']}), "
                  f"{hidden['replicas']} replicas, poll {hidden['poll_seconds']:g} s",
                  f"  HideMovies returned -> every replica applied them: {_fmt(hidden['convergence_s'])} s ({each})",
                  f"  then {load['seconds']:g} s of load over the replicas: {load['calls']:,} calls, "
                  f"{load['answers_holding_hidden']} answers holding a hidden movie, {load['errors']} errors, "
                  f"other problems {sum(v for k, v in load['problems'].items() if k != 'hidden')}",
                  ""]
    return lines + target_lines(report["targets"])


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    work = work_folder(args.work_dir, "movierec-filters-bench-")
    started = time.monotonic()
    servers = Servers(work)
    report: dict[str, Any] = {"benchmark": "filters", "created_at": dt.datetime.now(dt.UTC).isoformat(),
                              "out": args.out, "config": {k: v for k, v in vars(args).items()
                                                          if k not in ("out", "work_dir")}}
    try:
        specs: list = []
        if not args.skip_movielens:
            ml_root, specs = movielens_specs(args, work)
        if not args.skip_synthetic:
            root = str(work / "synthetic-models")
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(root)
            specs.append(("recommender-synthetic", "recommender_service.server",
                          ["--model-root", root, "--poll-seconds", "0.5", "--ranking-mb", str(args.ranking_mb)], None))
            if args.echo:
                specs.append(("echo", "benchmarks.echo_server", [], None))
        print(f"Starting {', '.join(spec[0] for spec in specs)}...", flush=True)
        launched = servers.start(specs)
        replicas = [launched[f"replica{n}"] for n in range(args.replicas)] if not args.skip_movielens else []
        # The MovieLens job trains while the synthetic catalogue is generated.
        job_id = submit_movielens_job(args, launched["trainer"]) if not args.skip_movielens else ""

        def job_done() -> None:  # no training on the cores while latency is measured
            if job_id and "movielens_job" not in report:
                report["movielens_job"] = wait_for_movielens(args, launched["trainer"], replicas, job_id)

        if not args.skip_synthetic:
            report["synthetic"] = synthetic_part(args, work, launched["recommender-synthetic"], root, job_done,
                                                 launched.get("echo"))
            servers.stop(["recommender-synthetic", "echo"])
            shutil.rmtree(root, ignore_errors=True)
        if job_id:
            job_done()
            oracle = movielens_oracle(ml_root, report["movielens_job"]["version"])
            movie_ids_file = work / "movielens-movie-ids.npy"
            np.save(movie_ids_file, oracle.art.movie_ids)
            report["movielens"] = movielens_part(args, work, replicas[0], oracle, movie_ids_file)
            report["hidden"] = hidden_part(args, work, launched["trainer"], replicas, oracle, movie_ids_file)

        import faiss
        import grpc

        report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "python": platform.python_version(), "grpcio": grpc.__version__,
                             "numpy": np.__version__, "faiss": faiss.__version__}
        report["wall_seconds"] = round(time.monotonic() - started, 1)
        report["targets"] = evaluate_targets(report)
        report["passed"] = all(t["passed"] for t in report["targets"])
        lines = report_lines(report)
        report["table"] = lines
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2, default=_json_default)
        print()
        print("\n".join(lines))
        print(f"\n{report['wall_seconds']} s; wrote {args.out}")
        return 0
    finally:
        servers.stop()
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _json_default(value):
    if isinstance(value, np.integer | np.floating):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


if __name__ == "__main__":
    sys.exit(main())
