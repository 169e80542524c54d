"""Load generator for the filter benchmark: Recommend calls that carry a ``Filter``, from their own process.

``benchmarks/loadgen.py`` sends plain calls only; this one sends filtered
ones, for the same reason it runs apart: a client inside the orchestrator
(or the server) would share its CPU and GIL. One asyncio ``grpc.aio`` loop
keeps ``concurrency`` calls in flight (1 for the latency figures), each
coroutine sending its next call as soon as the last one answered.

The orchestrator writes a *plan*: a list of phases, run one after another
over one channel per target. A phase's calls are numbered ``i = 0, 1, ...``
and call ``i`` is fully determined by the plan and ``i``:

* user ``users[(offset + i) % len(users)]`` (consecutive calls ask distinct
  users until the list runs out, so no answer cache helps);
* target ``i % T``, ``exclude_seen`` ``[(i // T) % E]``, filter
  ``[(i // (T E)) % F]`` and k ``[(i // (T E F)) % K]``: with several values
  each, every combination comes up within T E F K calls;
* a filter's random id list (``{"random": {"field": "exclude_movie_ids",
  "count": 10000}}``) is :func:`random_ids` of the phase's seed and ``i``:
  new for every call, and the orchestrator draws the same list again to
  check the answer, so no list has to be written down.

Requests are built before a call's clock starts (building a 10,000-id list
is client work, not the server's); serializing it is inside the call, as it
is for any caller. Every call's outcome is written, warm-up calls included
(``measured`` false), so that every answer can be checked.

Usage: ``python benchmarks/filter_load.py --plan plan.json --out result.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc
import numpy as np

from movierec.v1 import recommender_pb2, recommender_pb2_grpc

CALL_TIMEOUT_SECONDS = 10.0
FILTER_FIELDS = ("genres_any", "genres_all", "exclude_genres", "min_year", "max_year",
                 "exclude_movie_ids", "only_movie_ids")


def random_ids(movie_ids: np.ndarray, count: int, seed: int, call: int) -> np.ndarray:
    """``count`` distinct movie ids drawn from ``movie_ids`` for call ``call`` of a phase seeded ``seed``."""
    rng = np.random.default_rng([seed, call])
    return movie_ids[rng.choice(movie_ids.size, size=min(count, movie_ids.size), replace=False)]


def filter_message(spec: dict | None, movie_ids: np.ndarray | None, seed: int, call: int
                   ) -> recommender_pb2.Filter | None:
    """The Filter a spec describes for call ``call`` (None: the request carries no filter)."""
    if spec is None:
        return None
    fields = {name: spec[name] for name in FILTER_FIELDS if name in spec}
    message = recommender_pb2.Filter(**fields)
    random = spec.get("random")
    if random:
        if movie_ids is None:
            raise ValueError("a random id filter needs the plan's movie_ids_file")
        getattr(message, random["field"]).extend(random_ids(movie_ids, int(random["count"]), seed, call).tolist())
    return message


class Phase:
    """One phase of a plan: which calls to send, for how long."""

    def __init__(self, spec: dict, movie_ids: np.ndarray | None):
        self.name = spec["name"]
        self.users = [str(u) for u in spec["users"]]
        self.offset = int(spec.get("offset", 0))
        self.ks = [int(k) for k in spec.get("ks", [10])]
        self.excludes: list[bool | None] = list(spec.get("exclude_seen", [None]))
        self.filters: list[dict | None] = list(spec.get("filters", [None]))
        self.targets = int(spec.get("targets", 1))
        self.seed = int(spec.get("seed", 0))
        self.seconds = float(spec.get("seconds", 0.0))
        self.warmup = float(spec.get("warmup", 0.0))
        self.calls = int(spec.get("calls", 0))  # calls in all, warm-up included; 0 = no bound
        self.max_calls = int(spec.get("max_calls", 0))  # measured calls; 0 = no bound
        self.warmup_calls = int(spec.get("warmup_calls", 0))  # at least this many unmeasured calls first
        self.concurrency = int(spec.get("concurrency", 1))
        self.movie_ids = movie_ids
        if not self.users:
            raise ValueError(f"phase {self.name}: no users")

    def choice(self, i: int) -> tuple[int, bool | None, int, int, str]:
        """(target, exclude_seen, filter number, k, user) of call ``i``."""
        t, e, f = self.targets, len(self.excludes), len(self.filters)
        return (i % t, self.excludes[(i // t) % e], (i // (t * e)) % f, self.ks[(i // (t * e * f)) % len(self.ks)],
                self.users[(self.offset + i) % len(self.users)])

    def request(self, i: int) -> tuple[int, recommender_pb2.RecommendRequest]:
        target, exclude, number, k, user = self.choice(i)
        request = recommender_pb2.RecommendRequest(user_id=user, k=k)
        if exclude is not None:
            request.exclude_seen = bool(exclude)
        message = filter_message(self.filters[number], self.movie_ids, self.seed, i)
        if message is not None:
            request.filter.CopyFrom(message)
        return target, request


async def run_phase(phase: Phase, stubs: list[recommender_pb2_grpc.RecommenderStub]) -> dict:
    calls: list[dict[str, Any]] = []
    errors: dict[str, int] = {}
    counter = 0
    measured = 0
    t0 = time.monotonic()
    measure_from = t0 + phase.warmup
    stop_at = measure_from + phase.seconds if phase.seconds > 0 else float("inf")
    if stop_at == float("inf") and not (phase.calls or phase.max_calls):
        raise ValueError(f"phase {phase.name} has no end: give seconds, calls or max_calls")

    async def worker() -> None:
        nonlocal counter, measured
        while True:
            i = counter
            if (phase.max_calls and measured >= phase.max_calls) or (phase.calls and i >= phase.calls):
                return
            counter += 1
            target, request = phase.request(i)
            start = time.monotonic()
            if start >= stop_at:
                return
            is_measured = start >= measure_from and i >= phase.warmup_calls
            if is_measured:
                measured += 1
            record: dict[str, Any] = {"i": i, "target": target, "measured": is_measured}
            try:
                response = await stubs[target].Recommend(request, timeout=CALL_TIMEOUT_SECONDS)
                end = time.monotonic()
                record.update(code=0, ids=[item.movie_id for item in response.items],
                              eligible=int(response.eligible_movies), unknown=len(response.unknown_movie_ids),
                              version=int(response.model_version), cold_start=bool(response.cold_start))
            except grpc.aio.AioRpcError as exc:
                end = time.monotonic()
                key = f"{exc.code().name}: {exc.details()}"[:200]
                errors[key] = errors.get(key, 0) + 1
                record.update(code=exc.code().value[0], error=key)
            record.update(start=start, latency=end - start)
            calls.append(record)

    await asyncio.gather(*(worker() for _ in range(max(1, phase.concurrency))))
    calls.sort(key=lambda c: c["i"])
    return {"name": phase.name, "measure_from": measure_from, "finished": time.monotonic(), "calls": calls,
            "error_details": errors}


async def run_plan(plan: dict, targets: list[str]) -> list[dict]:
    movie_ids = np.load(plan["movie_ids_file"]) if plan.get("movie_ids_file") else None
    phases = [Phase(spec, movie_ids) for spec in plan["phases"]]
    # One HTTP/2 connection per target, as one client process would hold.
    channels = [grpc.aio.insecure_channel(t, options=[("grpc.enable_retries", 0)]) for t in targets]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
        stubs = [recommender_pb2_grpc.RecommenderStub(c) for c in channels]
        results = []
        for phase in phases:
            if phase.targets > len(stubs):
                raise ValueError(f"phase {phase.name} rotates over {phase.targets} targets; {len(stubs)} given")
            results.append(await run_phase(phase, stubs))
            print(f"phase {phase.name} done", flush=True)
        return results
    finally:
        for channel in channels:
            await channel.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="JSON: {targets, phases, movie_ids_file}")
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    with open(args.plan) as handle:
        plan = json.load(handle)
    targets = [t for t in plan["targets"] if t]
    if not targets:
        sys.exit("the plan names no target")
    phases = asyncio.run(run_plan(plan, targets))
    with open(args.out, "w") as handle:
        json.dump({"targets": targets, "phases": phases}, handle)
    print("done", flush=True)


if __name__ == "__main__":
    main()
