"""Load generator for the serving benchmark: an asyncio ``grpc.aio`` client.

It runs in its own process so that its CPU and GIL are not the server's: a
client inside the server process would make the server look slower (it shares
the interpreter) and the client look faster (no network hop). One asyncio
loop keeps exactly ``--concurrency`` calls in flight with that many
coroutines, each sending its next call as soon as the previous one answers
(a closed loop: throughput is what the server sustains at that concurrency,
latency is what a caller sees at it).

Timestamps are ``time.monotonic()``, which on Linux is CLOCK_MONOTONIC, the
same clock in every process, so the orchestrator can line calls up against
the moments it published a version or sampled memory.

Modes:

* ``load``: Recommend(random known user, k) for ``--seconds`` after a
  ``--warmup``; writes every call's start, latency, status and model_version.
  With ``--sessions-file`` each call is a random session from that file
  instead (a user id and the movies they just saw: ``recent_movie_ids``).
* ``check``: Recommend once for each listed user; writes the served ids and
  scores, for the correctness comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import grpc

from movierec.v1 import recommender_pb2, recommender_pb2_grpc

CALL_TIMEOUT_SECONDS = 10.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port (loopback)")
    parser.add_argument("--mode", choices=("load", "check"), default="load")
    parser.add_argument("--users-file", help="JSON list of user ids")
    parser.add_argument("--sessions-file",
                        help="load mode: JSON list of {\"user_id\": ..., \"recent\": [movie ids]} to send instead")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time (load mode)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time first (load mode)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distinct", action="store_true",
                        help="load mode: each call asks for the next user of the list (never a repeat until the "
                             "list runs out), so no answer cache helps")
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    if not args.users_file and not (args.sessions_file and args.mode == "load"):
        parser.error("--users-file is required (or --sessions-file in load mode)")
    return args


def _channel(target: str) -> grpc.aio.Channel:
    # One HTTP/2 connection carries all calls, as one client process would.
    return grpc.aio.insecure_channel(target, options=[("grpc.enable_retries", 0)])


async def run_load(args, users: list[str], sessions: list[dict] | None = None) -> dict:
    # Requests are built once: per-call protobuf construction would be client
    # CPU spent on the same core budget the server competes for.
    if sessions:
        requests = [recommender_pb2.RecommendRequest(user_id=str(s["user_id"]), k=args.k,
                                                     recent_movie_ids=[int(m) for m in s["recent"]])
                    for s in sessions]
    else:
        requests = [recommender_pb2.RecommendRequest(user_id=u, k=args.k) for u in users]
    starts: list[float] = []
    latencies: list[float] = []
    codes: list[int] = []
    versions: list[int] = []
    error_details: dict[str, int] = {}
    async with _channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        t0 = time.monotonic()
        measure_from = t0 + args.warmup
        stop_at = measure_from + args.seconds
        announced = False
        cursor = 0

        def next_request(rng: random.Random):
            nonlocal cursor
            if args.distinct:
                cursor += 1
                return requests[(cursor - 1) % len(requests)]
            return requests[rng.randrange(len(requests))]

        async def worker(seed: int) -> None:
            nonlocal announced
            rng = random.Random(seed)
            call = stub.Recommend
            while True:
                start = time.monotonic()
                if start >= stop_at:
                    return
                if start >= measure_from and not announced:
                    announced = True
                    # The orchestrator waits for this line to time its reload phase.
                    print(f"measuring {measure_from:.6f}", flush=True)
                request = next_request(rng)
                code, version = 0, 0
                try:
                    response = await call(request, timeout=CALL_TIMEOUT_SECONDS)
                    version = response.model_version
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().value[0]
                    key = f"{exc.code().name}: {exc.details()}"[:200]
                    error_details[key] = error_details.get(key, 0) + 1
                end = time.monotonic()
                if start >= measure_from:
                    starts.append(start)
                    latencies.append(end - start)
                    codes.append(code)
                    versions.append(version)

        await asyncio.gather(*(worker(args.seed * 1000 + i) for i in range(args.concurrency)))
        finished = time.monotonic()
    return {
        "mode": "load",
        "target": args.target,
        "concurrency": args.concurrency,
        "measure_from": measure_from,
        "stop_at": stop_at,
        "finished": finished,
        "starts": starts,
        "latencies": latencies,
        "codes": codes,
        "versions": versions,
        "error_details": error_details,
    }


async def run_check(args, users: list[str]) -> dict:
    results: list[dict | None] = [None] * len(users)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(users)):
        queue.put_nowait(i)
    async with _channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = recommender_pb2_grpc.RecommenderStub(channel)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    response = await stub.Recommend(
                        recommender_pb2.RecommendRequest(user_id=users[i], k=args.k), timeout=CALL_TIMEOUT_SECONDS)
                    results[i] = {
                        "user_id": users[i],
                        "movie_ids": [item.movie_id for item in response.items],
                        "scores": [item.score for item in response.items],
                        "model_version": response.model_version,
                        "cold_start": response.cold_start,
                    }
                except grpc.aio.AioRpcError as exc:
                    results[i] = {"user_id": users[i], "error": f"{exc.code().name}: {exc.details()}"}

        await asyncio.gather(*(worker() for _ in range(max(1, args.concurrency))))
    return {"mode": "check", "target": args.target, "results": results}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.sessions_file:
        with open(args.sessions_file) as handle:
            sessions = json.load(handle)
        if not sessions:
            sys.exit("no sessions given")
        result = asyncio.run(run_load(args, [], sessions))
    else:
        with open(args.users_file) as handle:
            users = [str(u) for u in json.load(handle)]
        if not users:
            sys.exit("no users given")
        runner = run_load if args.mode == "load" else run_check
        result = asyncio.run(runner(args, users))
    with open(args.out, "w") as handle:
        json.dump(result, handle)
    print("done", flush=True)


if __name__ == "__main__":
    main()
