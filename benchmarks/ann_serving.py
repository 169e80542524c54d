"""Serving at scale: a million-movie version with an approximate index, end to end.

What it does, and why:

* **A realistic synthetic model.** ``tests.artifacts.clustered_artifact``:
  item vectors from a mixture of Gaussians, long-tailed cluster sizes and
  popularity, and half of each user's seen movies taken from the user's own
  best matches (so excluding them is hard, as with real users). I.i.d. noise
  would make any index look bad and any cache look good.
* **The trainer's own code.** The index is built by
  ``ann_index.files_for_version`` and the version written by ``publish()``,
  exactly as ``run_job`` does.
* **A real recommender process**, started before the first publish, so
  publish-to-served covers everything: discovery, the manifest check, the
  SavedModel load and smoke test in the helper process, the rankings (shipped
  by the trainer and checked, or computed by the loader: ``--rankings``), the
  hand-off and the index load in the server. Then ``--reloads`` more versions
  are published, each while one call stays in flight, to see whether a reload
  stalls requests (its p99 counts the calls from the publish until
  ``SWAP_TAIL_SECONDS`` after the swap: the swap itself, the first calls on
  the new version and the release of the old one; the same run's later calls
  are the quiet figure beside it) and how much memory it takes; VmRSS of the
  server and of its loader child are sampled from /proc.
* **Latency** at 1 call in flight with distinct users (no answer cache
  helps), once with the default ranking budget (precomputed answers) and once
  on a second server with ``--ranking-mb 0`` (every call asks the index).
* **Quality**: served top-10 for random known users against an exact numpy
  scan of the same vectors with seen movies excluded (recall@10), plus the
  guarantees: k distinct, unseen movies per answer.

Run ``python benchmarks/ann_serving.py`` (about 5 minutes and 6 GB of memory
at the default 1,000,000 movies x 50,000 users; ``--tiny`` for a quick run).
It prints a table and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repo importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.serve import latency_stats, median_stats, run_loadgen, wait_for_version  # noqa: E402
from movierec_common.server_process import ServerProcess  # noqa: E402

# The targets.
TARGET_PUBLISH_TO_SERVED_S = 60.0
TARGET_RELOAD_RSS_RATIO = 2.5
TARGET_P99_MS_AT_1 = 2.0
TARGET_RECALL_AT_10 = 0.95
# Calls this long after a version starts serving still count as "during the reload".
SWAP_TAIL_SECONDS = 3.0
RANKINGS_MODES = ("shipped", "at-load", "alternate")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per latency run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--check-users", type=int, default=1000, help="users whose answers are checked for recall")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ranking-mb", type=float, default=256.0, help="the recommender's --ranking-mb")
    parser.add_argument("--ann-min-items", type=int, default=None,
                        help="index threshold (default: the trainer's); the catalogue must reach it")
    parser.add_argument("--skip-live", action="store_true", help="skip the --ranking-mb 0 server")
    parser.add_argument("--reload-seconds", type=float, default=60.0,
                        help="how long calls are measured after each publish (must cover the reload)")
    parser.add_argument("--reloads", type=int, default=3,
                        help="versions published after the first, each measured with one call in flight; "
                             "the reload figures are their medians (max: the worst)")
    parser.add_argument("--rankings", choices=RANKINGS_MODES, default="shipped",
                        help="shipped: versions carry the per-user rankings the trainer computes (the product); "
                             "at-load: the recommender's loader computes them (as before); alternate: reloads "
                             "alternate between the two, measured side by side in one run")
    parser.add_argument("--loader-cpus", type=int, default=None,
                        help="the recommender's --loader-cpus (default: the recommender's own, one core); "
                             "0 lets the loader run on any core, as before")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "ann_serving.json"))
    parser.add_argument("--work-dir", default=None, help="keep the model root and logs here (default: temp, removed)")
    parser.add_argument("--tiny", action="store_true",
                        help="30,000 movies x 2,000 users, short runs, one reload (two with --rankings alternate)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.items, args.users = min(args.items, 30_000), min(args.users, 2_000)
        args.seconds, args.warmup, args.check_users = min(args.seconds, 2.0), min(args.warmup, 0.3), min(
            args.check_users, 200)
        args.ann_min_items = args.ann_min_items or 10_000
        args.reload_seconds = min(args.reload_seconds, 6.0)  # a tiny version loads in 1-3 s
        args.reloads = min(args.reloads, 2 if args.rankings == "alternate" else 1)
    if args.reloads < 1:
        parser.error("--reloads must be at least 1")
    return args


# ----------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------

def _status(pid: int) -> dict[str, int]:
    try:
        with open(f"/proc/{pid}/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        return {"rss": int(fields["VmRSS"].split()[0]), "hwm": int(fields["VmHWM"].split()[0])}
    except (OSError, KeyError, ValueError):
        return {"rss": 0, "hwm": 0}


def descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    children = [int(c) for c in handle.read().split()]
            except OSError:
                continue
            found.extend(children)
            stack.extend(children)
    return found


class MemorySampler(threading.Thread):
    """VmRSS (kB) of a server and of all its children (the loader), every ``period`` s."""

    def __init__(self, pid: int, period: float = 0.05):
        super().__init__(name="memory-sampler", daemon=True)
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, server kB, children kB)
        self.server_hwm_kb = 0  # the server's own high-water mark (catches spikes between samples)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            server = _status(self.pid)
            children = sum(_status(child)["rss"] for child in descendants(self.pid))
            self.samples.append((time.monotonic(), server["rss"], children))
            self.server_hwm_kb = max(self.server_hwm_kb, server["hwm"])
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)

    def window(self, start: float, end: float) -> dict[str, float]:
        inside = [s for s in self.samples if start <= s[0] <= end] or self.samples[-1:]
        mb = 1 / 1024
        return {"server_mb": round(max(s[1] for s in inside) * mb, 1),
                "loader_mb": round(max(s[2] for s in inside) * mb, 1),
                "total_mb": round(max(s[1] + s[2] for s in inside) * mb, 1)}


# ----------------------------------------------------------------------------
# Phases
# ----------------------------------------------------------------------------

def publish_version(root: str, artifact, retrieval: dict, files: dict, variant: int, mode: str,
                    shipped: tuple | None) -> tuple[int, float, float]:
    """publish_timed with the rankings shipped (``mode`` "shipped", ``shipped`` from
    shipped_rankings.files_for_version) or left to the loader."""
    if mode != "shipped":
        return publish_timed(root, artifact, retrieval, files, variant)
    assert shipped is not None
    ranking_files, record = shipped
    return publish_timed(root, artifact, retrieval, {**files, **ranking_files}, variant, record)


def build_artifact(args):
    from tests.artifacts import clustered_artifact

    started = time.monotonic()
    artifact = clustered_artifact(users=args.users, items=args.items, dim=args.dim, seed=args.seed)
    return artifact, round(time.monotonic() - started, 1)


def build_index(args, artifact) -> tuple[dict, dict, float]:
    from movierec_common import ann_index

    started = time.monotonic()
    min_items = ann_index.MIN_ITEMS if args.ann_min_items is None else args.ann_min_items
    files, retrieval = ann_index.files_for_version(artifact.item_vectors, artifact.user_vectors,
                                                   min_items=min_items, seed=args.seed)
    if retrieval["backend"] != ann_index.BACKEND_FAISS:
        raise SystemExit(f"{args.items} movies is below the index threshold {min_items}: nothing to measure")
    return files, retrieval, round(time.monotonic() - started, 1)


def publish_timed(root: str, artifact, retrieval: dict, files: dict, variant: int,
                  rankings=None) -> tuple[int, float, float]:
    """(version, publish seconds, monotonic time the version became visible); ``rankings``: the shipped
    rankings' record (their file is in ``files``), None to leave them to the loader."""
    from movierec_common.artifact import VersionMetadata
    from trainer_service.publisher import publish

    started = time.monotonic()
    metadata = VersionMetadata(model_kind="synthetic", retrieval=retrieval, rankings=rankings,
                               extra={"benchmark": "ann_serving", "variant": variant})
    version = publish(root, artifact, metadata, files)
    done = time.monotonic()
    return version, round(done - started, 1), done


def served_at(target: str, version: int, timeout: float = 600.0) -> float:
    wait_for_version(target, version, timeout)
    return time.monotonic()


def latency_run(work: Path, target: str, users_file: Path, args, tag: str) -> tuple[dict, dict]:
    result = run_loadgen(work, target, users_file, concurrency=1, seconds=args.seconds, warmup=args.warmup,
                         k=args.k, seed=args.seed, tag=tag, distinct=True)
    stats = latency_stats(result)
    stats["error_details"] = result["error_details"]
    return stats, result


def recall_check(work: Path, target: str, artifact, args, tag: str) -> dict:
    """Served top-k of random known users against an exact scan with seen movies excluded."""
    rng = np.random.default_rng(args.seed + 1)
    users = np.sort(rng.choice(artifact.num_users, size=min(args.check_users, artifact.num_users), replace=False))
    users_file = work / f"check-{tag}.json"
    users_file.write_text(json.dumps([str(artifact.user_ids[u]) for u in users]))
    result = run_loadgen(work, target, users_file, concurrency=4, mode="check", k=args.k, tag=f"check-{tag}")
    position = np.argsort(artifact.movie_ids)
    sorted_ids = artifact.movie_ids[position]
    recalls, problems, errors = [], [], 0
    for start in range(0, users.size, 64):
        block = users[start:start + 64]
        scores = artifact.user_vectors[block] @ artifact.item_vectors.T
        for row, user in enumerate(block.tolist()):
            answer = result["results"][start + row]
            if answer is None or "error" in answer:
                errors += 1
                continue
            seen = artifact.seen_items(user)
            scores[row, seen] = -np.inf
            truth = np.argpartition(-scores[row], args.k)[:args.k]
            served = position[np.searchsorted(sorted_ids, answer["movie_ids"])]
            if len(served) != args.k or np.unique(served).size != args.k:
                problems.append(f"user {answer['user_id']}: {len(served)} answers, {np.unique(served).size} distinct")
            if np.isin(served, seen).any():
                problems.append(f"user {answer['user_id']}: a seen movie was served")
            recalls.append(np.intersect1d(truth, served).size / args.k)
    return {"users": int(users.size), "recall_at_10": round(float(np.mean(recalls)), 4) if recalls else None,
            "min_recall_at_10": round(float(np.min(recalls)), 2) if recalls else None,
            "errors": errors, "problems": len(problems), "examples": problems[:5]}


def load_seconds_from_log(log_path: Path, version: int) -> dict:
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "version serving" and entry.get("version") == version:
                return {k: v for k, v in entry.items() if k.endswith("_seconds") or k in (
                    "backend", "ranked_users", "smoke_recall_at_10")}
    return {}


def start_recommender(root: str, work: Path, name: str, *extra: str) -> ServerProcess:
    command = [sys.executable, "-m", "recommender_service.server", "--port", "0", "--model-root", root,
               "--poll-seconds", "0.5", *extra]
    return ServerProcess(name, command, work / f"{name}.log", cwd=REPO_ROOT).start(120)


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------

def evaluate_targets(report: dict) -> list[dict]:
    targets = []

    def add(name, value, limit, passed, unit=""):
        targets.append({"name": name, "value": value, "limit": limit, "passed": bool(passed), "unit": unit})

    worst = max(v["publish_to_served_s"] for v in report["versions"])
    add("publish-to-served (worst version)", worst, f"<= {TARGET_PUBLISH_TO_SERVED_S}",
        worst <= TARGET_PUBLISH_TO_SERVED_S, "s")
    ratio = report["memory"]["reload_ratio_total"]
    add("peak RSS during reload / steady (server + loader)", ratio, f"<= {TARGET_RELOAD_RSS_RATIO}",
        ratio <= TARGET_RELOAD_RSS_RATIO)
    for name, run in report["latency"].items():
        if name.startswith("same run"):
            continue  # a control, not a target
        add(f"p99 at 1 in flight, {name}", run["p99_ms"], f"<= {TARGET_P99_MS_AT_1}",
            run["p99_ms"] is not None and run["p99_ms"] <= TARGET_P99_MS_AT_1, "ms")
        add(f"failed calls, {name}", run["errors"], "== 0", run["errors"] == 0)
    for name, check in report["recall"].items():
        add(f"recall@10 vs exact, {name}", check["recall_at_10"], f">= {TARGET_RECALL_AT_10}",
            check["recall_at_10"] is not None and check["recall_at_10"] >= TARGET_RECALL_AT_10)
        add(f"answers with a seen, missing or repeated movie, {name}", check["problems"], "== 0",
            check["problems"] == 0 and check["errors"] == 0)
    return targets


def print_report(report: dict) -> None:
    model, index = report["model"], report["index"]
    print()
    print(f"Model: clustered synthetic, {model['num_users']:,} users x {model['num_items']:,} movies, "
          f"dim {model['dim']}; {report['machine']['cpus']} CPUs")
    print(f"Index: {index['kind']}, {index['nlist']} lists, nprobe {index['nprobe']} (calibrated recall@10 "
          f"{index['calibration_recall_at_10']}), trained on {index['train_vectors']:,} vectors; "
          f"build {index['build_seconds']} s, file {index['file_mb']} MB")
    print()
    print(f"{'version':>7} | {'rankings':>8} | {'publish s':>9} | {'publish-to-served s':>19} | "
          f"{'load s (server log)':>19}")
    for v in report["versions"]:
        print(f"{v['version']:>7} | {v['rankings']:>8} | {v['publish_seconds']:>9} | {v['publish_to_served_s']:>19} | "
              f"{v.get('load_seconds', '-')!s:>19}")
        phases = {k[:-len("_seconds")]: v[k] for k in v if k.endswith("_seconds") and k not in (
            "load_seconds", "publish_seconds")}
        if phases:
            print("          loader phases (s): " + ", ".join(f"{k} {t}" for k, t in phases.items()))
    m = report["memory"]
    print()
    print(f"RSS MB          {'server':>8} {'loader':>8} {'total':>8}")
    for name in ("steady", "reload_peak"):
        print(f"  {name:<13} {m[name]['server_mb']:>8} {m[name]['loader_mb']:>8} {m[name]['total_mb']:>8}")
    print(f"  reload peak / steady: total x{m['reload_ratio_total']}, server alone x{m['reload_ratio_server']}; "
          f"server VmHWM {m['steady']['server_hwm_mb']} -> {m['reload_peak']['server_hwm_mb']} MB")
    print()
    print(f"{'Recommend at 1 in flight (distinct users)':<54} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'calls':>7}")
    for name, run in report["latency"].items():
        print(f"  {name:<52} {run['p50_ms']:>7} {run['p99_ms']:>7} {run['max_ms']:>7} {run['calls']:>7}")
    print()
    for name, check in report["recall"].items():
        print(f"Recall@10 vs exact ({name}, {check['users']} users, seen excluded): {check['recall_at_10']} "
              f"(min {check['min_recall_at_10']}); bad answers {check['problems']}, errors {check['errors']}")
    print()
    for t in report["targets"]:
        unit = f" {t['unit']}" if t["unit"] else ""
        print(f"{'PASS' if t['passed'] else 'FAIL'}  {t['name']}: {t['value']}{unit} (target {t['limit']}{unit})")
    print(f"\nWrote {report['out']}")


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="movierec-ann-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    root = str(work / "models")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    started = time.monotonic()
    servers: list[ServerProcess] = []
    sampler = None
    try:
        print(f"Generating {args.items:,} movies x {args.users:,} users...", flush=True)
        artifact, generate_s = build_artifact(args)
        print(f"  {generate_s} s; building the index...", flush=True)
        files, retrieval, index_s = build_index(args, artifact)
        print(f"  {index_s} s: nlist {retrieval['nlist']}, nprobe {retrieval['nprobe']}", flush=True)
        # Versions alternate between two sets of vectors, so each reload changes every answer.
        variants = (dataclasses.replace(artifact, user_vectors=artifact.user_vectors * np.float32(1.01)), artifact)
        # What each reload publishes: the rankings shipped (the trainer's) or left to the loader.
        modes = ["shipped", "at load"] if args.rankings == "alternate" else [args.rankings.replace("-", " ")]
        shipped: dict[int, tuple] = {}  # vector set -> shipped_rankings.files_for_version's (files, record)
        if "shipped" in modes:
            from recommender_service import shipped_rankings

            for number, variant in enumerate(variants):
                print(f"  ranking every user for vector set {number} (the trainer's part)...", flush=True)
                shipped[number] = shipped_rankings.files_for_version(variant, files, retrieval)
        users_file = work / "users.json"
        order = np.random.default_rng(args.seed).permutation(artifact.num_users)
        users_file.write_text(json.dumps([str(artifact.user_ids[u]) for u in order]))

        loader_cpus = () if args.loader_cpus is None else ("--loader-cpus", str(args.loader_cpus))
        ours = start_recommender(root, work, "recommender", "--ranking-mb", str(args.ranking_mb), *loader_cpus)
        servers.append(ours)
        sampler = MemorySampler(ours.process.pid)
        sampler.start()
        versions = []
        print("Publishing version 1 (cold loader)...", flush=True)
        version, publish_s, visible = publish_version(root, artifact, retrieval, files, 1, modes[0], shipped.get(1))
        served = served_at(ours.target, version)
        versions.append({"version": version, "publish_seconds": publish_s, "rankings": modes[0],
                         "publish_to_served_s": round(served - visible, 1)})
        time.sleep(2.0)
        print("Latency, precomputed rankings...", flush=True)
        steady_start = time.monotonic()
        cached, _ = latency_run(work, ours.target, users_file, args, "cached")
        steady = sampler.window(steady_start, time.monotonic())
        steady["server_hwm_mb"] = round(sampler.server_hwm_kb / 1024, 1)

        reload_users = work / "users-reload.json"  # other users than the cached run: no answer-cache hits
        reload_users.write_text(json.dumps([str(artifact.user_ids[u]) for u in order[::-1]]))
        during_runs: dict[str, list] = {mode: [] for mode in modes}
        after_runs, reload_windows = [], []
        for reload in range(args.reloads):
            variant = variants[reload % 2]
            mode = modes[reload % len(modes)]
            print(f"Publishing version {reload + 2} (warm loader, rankings {mode}), one call in flight during "
                  f"the reload...", flush=True)
            version, publish_s, visible = publish_version(root, variant, retrieval, files, reload + 2, mode,
                                                          shipped.get(reload % 2))
            during: dict = {}
            caller = threading.Thread(target=lambda into=during, number=reload: into.update(result=run_loadgen(
                work, ours.target, reload_users, concurrency=1, seconds=args.reload_seconds, warmup=0.2,
                k=args.k, seed=args.seed + number, tag=f"reload-{number}", distinct=True)))
            caller.start()
            served = served_at(ours.target, version)
            caller.join()
            versions.append({"version": version, "publish_seconds": publish_s, "rankings": mode,
                             "publish_to_served_s": round(served - visible, 1)})
            reload_windows.append((visible, served))
            result = during["result"]
            window_end = min(served + SWAP_TAIL_SECONDS, result["stop_at"])
            during_runs[mode].append({**latency_stats(result, result["measure_from"], window_end),
                                "truncated": served + SWAP_TAIL_SECONDS > result["stop_at"],
                                "error_details": result["error_details"]})
            if window_end < result["stop_at"]:  # the same run's calls after the swap: this machine without a reload
                after_runs.append(latency_stats(result, window_end, result["stop_at"]))
        for v in versions:
            v.update(load_seconds_from_log(work / "recommender.log", v["version"]))
        peaks = [sampler.window(visible, served) for visible, served in reload_windows]
        reload_peak = {key: max(peak[key] for peak in peaks) for key in peaks[0]}
        reload_peak["server_hwm_mb"] = round(sampler.server_hwm_kb / 1024, 1)
        latency = {"precomputed rankings": _public(cached)}
        for mode, runs in during_runs.items():
            if not runs:
                continue
            name = "during the reload" + (f", rankings {mode}" if len(modes) > 1 else "")
            latency[name] = _public(_over_reloads(runs))
            if any(run["truncated"] for run in runs):
                latency[name]["note"] = "a reload outlasted --reload-seconds; its window was truncated"
        if after_runs:
            latency["same run, after the reload"] = _public(_over_reloads(after_runs))

        print("Recall check...", flush=True)
        recall = {"precomputed rankings": recall_check(work, ours.target, variant, args, "cached")}
        if not args.skip_live:
            print("Second server with --ranking-mb 0 (every call asks the index)...", flush=True)
            live_server = start_recommender(root, work, "recommender-live", "--ranking-mb", "0")
            servers.append(live_server)
            wait_for_version(live_server.target, version, 600)
            live, _ = latency_run(work, live_server.target, users_file, args, "live")
            latency["live index search"] = _public(live)
            recall["live index search"] = recall_check(work, live_server.target, variant, args, "live")
            live_server.stop()

        import faiss
        import grpc

        report = {
            "benchmark": "ann_serving",
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "out": args.out,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "grpcio": grpc.__version__, "numpy": np.__version__, "faiss": faiss.__version__},
            "config": {k: v for k, v in vars(args).items() if k not in ("out", "work_dir")},
            "model": {"num_users": artifact.num_users, "num_items": artifact.num_items,
                      "dim": int(artifact.item_vectors.shape[1]), "seen": int(artifact.seen_indices.size),
                      "generate_seconds": generate_s},
            "index": {**{k: retrieval[k] for k in ("kind", "nlist", "nprobe", "train_vectors", "build_seconds",
                                                   "calibration_recall_at_10")},
                      "files_for_version_seconds": index_s,
                      "shipped_rankings_seconds": [record.seconds for _, record in shipped.values()],
                      "file_mb": round(sum(len(b) for b in files.values()) / 2**20, 1)},
            "versions": versions,
            "memory": {"steady": steady, "reload_peak": reload_peak,
                       "reload_ratio_total": round(reload_peak["total_mb"] / max(steady["total_mb"], 1e-9), 2),
                       "reload_ratio_server": round(reload_peak["server_mb"] / max(steady["server_mb"], 1e-9), 2)},
            "latency": latency,
            "recall": recall,
            "wall_seconds": round(time.monotonic() - started, 1),
        }
        report["targets"] = evaluate_targets(report)
        report["passed"] = all(t["passed"] for t in report["targets"])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)
        print_report(report)
        return 0
    finally:
        if sampler is not None:
            sampler.stop()
        for server in servers:
            server.stop()
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _over_reloads(runs: list[dict]) -> dict:
    """Medians over reloads of a latency window's figures (the worst max; calls and errors summed), with each
    reload's own figures beside them."""
    merged = median_stats([{key: run[key] for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "calls_per_s",
                                                      "calls", "errors", "seconds")} for run in runs])
    merged["max_ms"] = max((run["max_ms"] for run in runs if run["max_ms"] is not None), default=None)
    merged["reloads"] = [{key: run[key] for key in ("p50_ms", "p99_ms", "max_ms", "calls", "errors")} for run in runs]
    merged["error_details"] = {}
    for run in runs:
        for detail, count in run.get("error_details", {}).items():
            merged["error_details"][detail] = merged["error_details"].get(detail, 0) + count
    return merged


def _public(stats: dict) -> dict:
    return {**stats, "error_details": stats.get("error_details", {})}


if __name__ == "__main__":
    sys.exit(main())
