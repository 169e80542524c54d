"""Load generator for the ingestion benchmarks: RecordInteractions batches from a process of its own.

Like ``benchmarks/loadgen.py`` it runs apart from the orchestrator and the
server, so that its CPU and GIL are its own, with one asyncio ``grpc.aio``
channel (one HTTP/2 connection, as one client process holds). Two ways to
send:

* **closed loop** (``--rate 0``): ``--in-flight`` coroutines, each sending
  its next batch as soon as the last one is acknowledged: what the server
  acknowledges at that concurrency;
* **paced** (``--rate R`` interactions/s): batch ``n`` is sent at
  ``t0 + n * batch / R`` whether or not earlier ones have answered (an open
  loop, as independent callers behave), at most ``--in-flight`` outstanding.

What a batch holds is a pure function of ``(seed, stream, batch number)``
(:func:`batch_content`), so the orchestrator can recompute every interaction
a client sent and check the store holds each acknowledged one, with the same
user, movie and rating, exactly once, without the client writing them down.
Event ids are ``b<seed>-<stream>-<batch>-<j>``: unique across a run whose
orchestrator gives every client its own stream number.

Protocol: the client connects, prints ``ready``, then waits for a line
``go <t0>`` on stdin (``t0``: ``time.monotonic()``, the same clock in every
process on Linux) so that several clients start together. It stops sending at
``t0 + --seconds`` or when stdin says ``stop``, waits for what is in flight,
and writes every call (batch, sent, answered, status, stored, duplicates) to
``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import threading
import time
from typing import Any

import grpc
import numpy as np

from movierec.v1 import recommender_pb2

METHOD = "/movierec.v1.Recommender/RecordInteractions"
CALL_TIMEOUT_SECONDS = 30.0


class Population:
    """Who interacts with what: user ids and movie ids with their cumulative draw weights."""

    def __init__(self, data: dict[str, Any]):
        self.users = [str(u) for u in data["users"]]
        self.user_cdf = np.asarray(data["user_cdf"], dtype=np.float64)
        self.movies = np.asarray(data["movies"], dtype=np.int64)
        self.movie_cdf = np.asarray(data["movie_cdf"], dtype=np.float64)

    @staticmethod
    def build(users: list[str], user_weight: np.ndarray, movies: np.ndarray, movie_weight: np.ndarray
              ) -> dict[str, Any]:
        def cdf(weight: np.ndarray) -> list[float]:
            w = np.asarray(weight, dtype=np.float64)
            c = np.cumsum(w / w.sum())
            c[-1] = 1.0
            return c.tolist()

        return {"users": list(users), "user_cdf": cdf(user_weight), "movies": np.asarray(movies).tolist(),
                "movie_cdf": cdf(movie_weight)}


def event_id(seed: int, stream: int, batch: int, j: int) -> str:
    return f"b{seed}-{stream}-{batch}-{j}"


def batch_content(population: Population, seed: int, stream: int, batch: int, size: int
                  ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(user ids, movie ids, ratings with NaN = none) of one batch: drawn from its own generator."""
    rng = np.random.default_rng([seed, stream, batch])
    users = np.minimum(np.searchsorted(population.user_cdf, rng.random(size), side="right"),
                       len(population.users) - 1)
    movies = population.movies[np.minimum(np.searchsorted(population.movie_cdf, rng.random(size), side="right"),
                                          population.movies.size - 1)]
    rated = rng.random(size) < 0.6
    ratings = np.where(rated, rng.integers(1, 11, size=size) / 2.0, np.nan)
    return [population.users[u] for u in users.tolist()], movies, ratings


def batch_request(population: Population, seed: int, stream: int, batch: int, size: int) -> bytes:
    users, movies, ratings = batch_content(population, seed, stream, batch, size)
    now = time.time()
    seconds, nanos = int(now), int((now % 1) * 1e9)
    request = recommender_pb2.RecordInteractionsRequest()
    for j, (user, movie, rating) in enumerate(zip(users, movies.tolist(), ratings.tolist(), strict=True)):
        item = request.interactions.add(event_id=event_id(seed, stream, batch, j), user_id=user, movie_id=movie)
        if not math.isnan(rating):
            item.rating = rating
        item.occurred_at.seconds, item.occurred_at.nanos = seconds, nanos
    return request.SerializeToString()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--population", required=True, help="JSON: users, user_cdf, movies, movie_cdf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stream", type=int, required=True, help="this client's number: unique in the run")
    parser.add_argument("--batch", type=int, default=100, help="interactions per call")
    parser.add_argument("--rate", type=float, default=0.0, help="interactions/s; 0 = closed loop")
    parser.add_argument("--in-flight", type=int, default=4,
                        help="closed loop: calls kept in flight; paced: the most outstanding at once")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop sending after this long (0: at 'stop')")
    parser.add_argument("--prebuild", type=int, default=0,
                        help="batches built before 'ready' (later ones are built as they are sent)")
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


class Calls:
    """Every call's record, as parallel lists (compact JSON)."""

    def __init__(self) -> None:
        self.batch: list[int] = []
        self.sent: list[float] = []
        self.answered: list[float] = []
        self.code: list[int] = []
        self.stored: list[int] = []
        self.duplicates: list[int] = []
        self.errors: dict[str, int] = {}

    def add(self, batch: int, sent: float, answered: float, code: int, stored: int, duplicates: int) -> None:
        self.batch.append(batch)
        self.sent.append(sent)
        self.answered.append(answered)
        self.code.append(code)
        self.stored.append(stored)
        self.duplicates.append(duplicates)

    def as_json(self) -> dict[str, Any]:
        return {"batch": self.batch, "sent": self.sent, "answered": self.answered, "code": self.code,
                "stored": self.stored, "duplicates": self.duplicates, "error_details": self.errors}


async def run(args: argparse.Namespace, population: Population) -> dict[str, Any]:
    calls = Calls()
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(args.target, options=[("grpc.enable_retries", 0)]) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        # Requests go out as bytes built here (identity serializer): the response is parsed, to count it.
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, recommender_pb2.RecordInteractionsResponse] = (
            channel.unary_unary(METHOD, request_serializer=None,
                                response_deserializer=recommender_pb2.RecordInteractionsResponse.FromString))
        # Built before the clock starts, as loadgen.py builds its requests: building a batch of 100 costs
        # about 1 ms of client CPU, taken from the cores the server is measured on.
        prebuilt = [batch_request(population, args.seed, args.stream, n, args.batch) for n in range(args.prebuild)]

        def payload(batch: int) -> bytes:
            if batch < len(prebuilt):
                return prebuilt[batch]
            return batch_request(population, args.seed, args.stream, batch, args.batch)

        lines: asyncio.Queue[str] = asyncio.Queue()

        def read_stdin() -> None:  # a daemon thread: a blocked readline never holds up the exit
            while True:
                text = sys.stdin.readline()
                loop.call_soon_threadsafe(lines.put_nowait, text)
                if not text:
                    return

        threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
        print("ready", flush=True)
        line = await lines.get()
        if not line.startswith("go"):
            return {"stream": args.stream, "aborted": line.strip()}
        t0 = max(float(line.split()[1]), time.monotonic())
        stop_at = t0 + args.seconds if args.seconds > 0 else math.inf
        stopping = asyncio.Event()

        async def watch_stdin() -> None:
            while True:
                text = await lines.get()
                if not text or text.startswith("stop"):
                    stopping.set()
                    return

        watcher = asyncio.ensure_future(watch_stdin())
        next_batch = 0
        cpu_start = time.process_time()

        def done() -> bool:
            return stopping.is_set() or time.monotonic() >= stop_at

        async def send(batch: int, payload: bytes) -> None:
            sent = time.monotonic()
            try:
                response = await call(payload, timeout=CALL_TIMEOUT_SECONDS)
                calls.add(batch, sent, time.monotonic(), 0, int(response.stored), int(response.duplicates))
            except grpc.aio.AioRpcError as exc:
                calls.add(batch, sent, time.monotonic(), exc.code().value[0], 0, 0)
                key = f"{exc.code().name}: {exc.details()}"[:200]
                calls.errors[key] = calls.errors.get(key, 0) + 1

        print(f"started {t0:.6f}", flush=True)
        if args.rate <= 0:
            async def worker() -> None:
                nonlocal next_batch
                while not done():
                    batch = next_batch
                    next_batch += 1
                    await send(batch, payload(batch))

            await asyncio.gather(*(worker() for _ in range(max(1, args.in_flight))))
        else:
            interval = args.batch / args.rate
            slots = asyncio.Semaphore(max(1, args.in_flight))
            pending: set[asyncio.Task] = set()
            late = 0

            async def paced(batch: int, payload: bytes) -> None:
                try:
                    await send(batch, payload)
                finally:
                    slots.release()

            while not done():
                due = t0 + next_batch * interval
                pause = due - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                    if done():
                        break
                request = payload(next_batch)
                await slots.acquire()
                if time.monotonic() - due > interval:
                    late += 1
                task = asyncio.ensure_future(paced(next_batch, request))
                pending.add(task)
                task.add_done_callback(pending.discard)
                next_batch += 1
            if pending:
                await asyncio.gather(*pending)
        finished = time.monotonic()
        watcher.cancel()
    result = {"stream": args.stream, "seed": args.seed, "batch_size": args.batch, "rate": args.rate,
              "in_flight": args.in_flight, "t0": t0, "finished": finished, "batches_sent": next_batch,
              "client_cpu_seconds": round(time.process_time() - cpu_start, 3), "prebuilt": args.prebuild,
              **calls.as_json()}
    if args.rate > 0:
        result["sent_late"] = late  # batches sent more than one interval after they were due
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    with open(args.population) as handle:
        population = Population(json.load(handle))
    result = asyncio.run(run(args, population))
    with open(args.out, "w") as handle:
        json.dump(result, handle)
    print("done", flush=True)


if __name__ == "__main__":
    main()
