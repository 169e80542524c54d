"""Answer cache memory: how much a recommender's process tree grows under calls with caller-chosen keys.

One real recommender (a process, as deployed) serves a 3,000-movie, 1,000-user
version. After 200 warm-up calls, it gets ``--calls`` Recommend calls with
distinct (user, k) keys, and the resident memory of its process tree (server
and loader helper) is read before and after. Two key ranges, side by side in
one run:

* ``k 901..1000``: deep answers, never kept (above ``answers.MAX_CACHED_K``);
  before the cache was bounded, 20,000 such calls grew a replica by 1.6 GB;
* ``k 1..100``: answers that are kept, so the cache fills to its budget
  (``--answer-cache-mb``, default 64) and then evicts; growth should stay near
  the budget.

Run ``python benchmarks/answer_cache.py`` (about a minute; ``--tiny`` for 500
calls). Prints a table, writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from clients import RecommenderClient  # noqa: E402
from movierec_common.artifact import VersionMetadata  # noqa: E402
from tests.artifacts import tiny_artifact  # noqa: E402
from tests.servers import start_recommender  # noqa: E402
from trainer_service.publisher import publish  # noqa: E402

KEY_RANGES = {"k 901..1000 (never kept)": 901, "k 1..100 (kept, fills the budget)": 1}
TINY_CALLS = 500  # a smoke run: every key range measured, memory not judged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="Recommend calls per key range")
    parser.add_argument("--answer-cache-mb", type=float, default=64.0, help="the recommender's budget")
    parser.add_argument("--tiny", action="store_true", help=f"{TINY_CALLS:,} calls: a quick check that it runs")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "answer_cache.json"))
    return parser.parse_args(argv)


def _tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def measure(root: Path, work: Path, users: list[str], first_k: int, calls: int, budget_mb: float) -> dict:
    """Process-tree RSS before and after ``calls`` distinct (user, k) keys, k from first_k to first_k + 99."""
    server = start_recommender(root, work, "--answer-cache-mb", str(budget_mb))
    try:
        with RecommenderClient(server.address, timeout=30) as client:
            client.wait_until_serving(timeout=120)
            for n in range(200):
                client.recommend(users[n % len(users)], k=10)
            before = _tree_rss(server.process.pid)
            started = time.monotonic()
            for n in range(calls):
                client.recommend(users[n % len(users)], k=first_k + (n * 37 + n // len(users)) % 100)
            seconds = time.monotonic() - started
            after = _tree_rss(server.process.pid)
    finally:
        server.terminate()
    return {"before_mb": before / 2**20, "after_mb": after / 2**20, "growth_mb": (after - before) / 2**20,
            "calls": calls, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    calls = TINY_CALLS if args.tiny else args.calls
    work = Path(tempfile.mkdtemp(prefix="movierec-answer-cache-"))
    try:
        artifact = tiny_artifact(users=1000, items=3000, dim=32)
        publish(str(work / "models"), artifact, VersionMetadata(model_kind="benchmark"))
        users = [str(u) for u in artifact.user_ids]
        rows = {name: measure(work / "models", work, users, first_k, calls, args.answer_cache_mb)
                for name, first_k in KEY_RANGES.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'keys':<36}{'calls':>8}{'before MB':>11}{'after MB':>10}{'growth MB':>11}")
    for name, row in rows.items():
        print(f"{name:<36}{row['calls']:>8}{row['before_mb']:>11.0f}{row['after_mb']:>10.0f}{row['growth_mb']:>11.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"answer_cache_mb": args.answer_cache_mb, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
