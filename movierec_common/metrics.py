"""Prometheus metrics of both servers, and the ``/metrics`` endpoint.

Every metric is defined once, here, at import, and exported from a registry
of this package's own (:data:`REGISTRY`): a module is imported once per
process, so building a second ``ModelRegistry`` or ``JobManager`` in one
process (the unit tests build many) can never register a name twice, and
nothing another library puts in prometheus_client's global registry leaks into
our scrape. Domain code calls the small functions below and never touches a
metric object, so it stays plain and the names stay in one place.

A server exports the gRPC metrics and its own role's (:func:`serve`), not the
other role's: a trainer showing ``movierec_model_version 0`` would read as a
replica serving nothing.

The process's own CPU, memory, file descriptors and garbage collections are
exported too (prometheus_client's standard collectors), so one scrape tells an
operator whether a slow replica is starved or leaking.

Recording works whether or not ``/metrics`` is served: it is a lock and an
addition, far off any request's critical path. Only the gRPC interceptor
(``movierec_common.grpc_server``), which runs on every call, is left out of a
server started without ``--metrics-port``.
"""

from __future__ import annotations

import argparse
import logging
import math
import threading
from collections.abc import Mapping
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from movierec.v1.vocabulary import JOB_STATES, QUEUED, RUNNING
from movierec_common.logs import event

log = logging.getLogger(__name__)

# Go clients export no ``*_created`` series and dashboards do not use them;
# without this every counter and histogram child gets a second series. Read
# when a metric is created, so it must run before the definitions below.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream

REGISTRY = CollectorRegistry(auto_describe=True)
prometheus_client.ProcessCollector(registry=REGISTRY)
prometheus_client.PlatformCollector(registry=REGISTRY)
prometheus_client.GCCollector(registry=REGISTRY)

# -- gRPC (the go-grpc-prometheus names and labels, so its dashboards work) ----

GRPC_STARTED = Counter(
    "grpc_server_started_total", "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"], registry=REGISTRY)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total", "RPCs completed on the server, regardless of success or failure.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"], registry=REGISTRY)
# go-grpc-prometheus's default buckets start at 5 ms, where every recommendation
# would fall into the first one: in its handler a cached answer takes ~15 us and
# a live ranking well under 1 ms (gRPC's own ~200 us per call is not in this time).
GRPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC's handler until it returned (or its stream ended).",
    ["grpc_type", "grpc_service", "grpc_method"], registry=REGISTRY,
    buckets=(0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
             1.0, 2.5, 5.0, 10.0, math.inf))

# -- Recommender ---------------------------------------------------------------

MODEL_VERSION = Gauge("movierec_model_version", "The model version being served (0 before the first load).",
                      registry=None)
RELOAD_OUTCOMES = ("loaded", "rejected", "unreachable")
MODEL_RELOADS = Counter(
    "movierec_model_reloads_total",
    "Attempts to load a model version, by outcome: loaded (now serving), rejected (failed validation; the "
    "previous version keeps serving), unreachable (the model root could not be read; retried next poll).",
    ["outcome"], registry=None)
MODEL_LOAD_SECONDS = Histogram(
    "movierec_model_load_seconds",
    "Time from finding a version to serving it: copy, validation in the loader process, warm-up.",
    registry=None, buckets=(0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, math.inf))
SESSION_REQUESTS = Counter(
    "movierec_session_requests_total", "Recommend calls that carried recent_movie_ids (a session).",
    registry=None)
FILTERED_REQUESTS = Counter(
    "movierec_filtered_requests_total", "Calls that carried a filter, by RPC (Recommend, RecommendBatch, "
    "SimilarItems).", ["rpc"], registry=None)
HIDDEN_MOVIES = Gauge(
    "movierec_hidden_movies", "Movies the operators hid (Trainer.HideMovies) that this replica leaves out of "
    "every answer.", registry=None)
ANSWER_CACHE_BYTES = Gauge(
    "movierec_answer_cache_bytes",
    "Estimated memory held by the served version's kept answers (bounded by --answer-cache-mb).", registry=None)
BATCH_USERS_RANKED = Counter(
    "movierec_batch_users_ranked_total",
    "Users RecommendBatch calls ranked, counted when a call ends (a call stopped because its caller left or "
    "its deadline passed counts the users ranked before it stopped).", registry=None)
ONLINE_JUDGED = Counter(
    "movierec_online_judged_total", "Recommendations judged for the online hit rate (followed by 10 interactions "
    "of their user, or 24 hours old), by the model version that made them.", ["version"], registry=None)
ONLINE_HITS = Counter(
    "movierec_online_hits_total", "Judged recommendations whose user then interacted with one of the recommended "
    "movies, by model version.", ["version"], registry=None)
ONLINE_HIT_RATE = Gauge(
    "movierec_online_hit_rate", "hits / judged of each model version on this replica since it started.",
    ["version"], registry=None)
FRESH_INTERACTIONS = Gauge(
    "movierec_fresh_interactions", "Interactions after the served version's watermark held in memory as "
    "fresh histories.", registry=None)
EVENTS_FOLLOWED = Gauge(
    "movierec_events_followed", "The event store position this replica has read up to.", registry=None)

# -- Trainer -------------------------------------------------------------------

JOBS = Counter("movierec_jobs_total", "Training jobs that reached each state in this process.", ["state"],
               registry=None)
JOBS_QUEUED = Gauge("movierec_jobs_queued", "Training jobs waiting behind the running one.", registry=None)
TRAINING_EPOCH = Gauge("movierec_training_epoch",
                       "The last epoch the running (or last) job reported; 0 until its first epoch ends.",
                       registry=None)
TRAINING_LOSS = Gauge("movierec_training_loss",
                      "The training loss of the last epoch the running (or last) job reported; NaN until then.",
                      registry=None)
TRAINING_LOSS.set(math.nan)

# Every outcome and state is exported from the start, at 0: rate() and
# increase() miss the first event of a series that appears already at 1.
for _outcome in RELOAD_OUTCOMES:
    MODEL_RELOADS.labels(_outcome)
for _state in JOB_STATES:
    JOBS.labels(_state)
# Children bound once: labels() costs several microseconds per call on the request path.
_FILTERED_BY_RPC = {rpc: FILTERED_REQUESTS.labels(rpc) for rpc in ("Recommend", "RecommendBatch", "SimilarItems")}

ROLES = {
    "recommender": (MODEL_VERSION, MODEL_RELOADS, MODEL_LOAD_SECONDS, SESSION_REQUESTS, FILTERED_REQUESTS,
                    HIDDEN_MOVIES, ANSWER_CACHE_BYTES, BATCH_USERS_RANKED, ONLINE_JUDGED, ONLINE_HITS,
                    ONLINE_HIT_RATE, FRESH_INTERACTIONS, EVENTS_FOLLOWED),
    "trainer": (JOBS, JOBS_QUEUED, TRAINING_EPOCH, TRAINING_LOSS),
}


# -- What domain code calls ------------------------------------------------------

def model_loaded(version: int, seconds: float) -> None:
    MODEL_VERSION.set(version)
    MODEL_RELOADS.labels("loaded").inc()
    MODEL_LOAD_SECONDS.observe(seconds)


def model_reload_failed(outcome: str) -> None:
    """``outcome``: "rejected" or "unreachable" (RELOAD_OUTCOMES)."""
    MODEL_RELOADS.labels(outcome).inc()


def session_request() -> None:
    SESSION_REQUESTS.inc()


def filtered_request(rpc: str) -> None:
    _FILTERED_BY_RPC[rpc].inc()


def hidden_movies(count: int) -> None:
    HIDDEN_MOVIES.set(count)


def answer_cache_bytes(nbytes: int) -> None:
    ANSWER_CACHE_BYTES.set(nbytes)


def batch_users_ranked(users: int) -> None:
    BATCH_USERS_RANKED.inc(users)


def online_outcome(version: int, hit: bool, hit_rate: float) -> None:
    label = str(version)
    ONLINE_JUDGED.labels(label).inc()
    hits = ONLINE_HITS.labels(label)  # exported from the first judgement on, at 0 until a hit
    if hit:
        hits.inc()
    ONLINE_HIT_RATE.labels(label).set(hit_rate)


def events_followed(position: int, fresh_interactions: int) -> None:
    EVENTS_FOLLOWED.set(position)
    FRESH_INTERACTIONS.set(fresh_interactions)


def job_reached(state: str) -> None:
    JOBS.labels(state).inc()


def job_queued(queued: int) -> None:
    """A job joined the queue, which now holds ``queued``."""
    JOBS.labels(QUEUED).inc()
    JOBS_QUEUED.set(queued)


def jobs_queued(queued: int) -> None:
    """The queue shrank without a job starting (cancelled, shut down)."""
    JOBS_QUEUED.set(queued)


def job_started(queued: int) -> None:
    """A job left the queue and runs; its progress starts from nothing, not from the last job's final epoch."""
    JOBS.labels(RUNNING).inc()
    JOBS_QUEUED.set(queued)
    TRAINING_EPOCH.set(0)
    TRAINING_LOSS.set(math.nan)


def job_progress(fields: Mapping[str, Any]) -> None:
    """Takes a job's progress report as it is (``JobContext.report``'s fields); most carry no epoch."""
    if "epoch" in fields:
        TRAINING_EPOCH.set(fields["epoch"])
    if "loss" in fields:
        TRAINING_LOSS.set(fields["loss"])


# -- The endpoint ----------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=_port, default=0, metavar="PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics on the gRPC --host "
                             "(0 = off, the default: then no call is counted or timed)")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 (off) to 65535, got {text!r}")
    return value


_lock = threading.Lock()
_exported: set[str] = set()


def serve(host: str, port: int, role: str) -> None:
    """Serves ``/metrics`` on ``host:port`` from a daemon thread (prometheus_client's own HTTP server).

    ``role`` ("recommender" or "trainer") adds that server's own metrics to
    the export. Bound to the same address as the gRPC server: a server kept
    on loopback keeps its metrics there too. The servers call this before
    they start listening for gRPC, so a port clash (OSError) ends start-up
    with one clear line instead of leaving a server half-started.
    """
    with _lock:
        if role not in _exported:
            for metric in ROLES[role]:
                REGISTRY.register(metric)
            _exported.add(role)
    prometheus_client.start_http_server(port, addr=host.strip("[]"), registry=REGISTRY)
    event(log, "metrics served", url=f"http://{host}:{port}/metrics")


def serve_from_args(args: argparse.Namespace, role: str) -> bool:
    """Starts ``/metrics`` when ``--metrics-port`` asks for it; True when it did."""
    if not args.metrics_port:
        return False
    try:
        serve(args.host, args.metrics_port, role)
    except OSError as exc:
        raise SystemExit(f"movierec-{role}: cannot serve metrics on {args.host}:{args.metrics_port}: "
                         f"{exc.strerror or exc}") from exc
    return True
