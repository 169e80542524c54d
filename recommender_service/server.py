"""``movierec-recommender``: the Recommender gRPC server process."""

from __future__ import annotations

import os

# The server answers concurrent calls with threads; a BLAS call that forks
# its own threads per query fights them (measured: a 50k-movie exact scan
# took 8 ms with two BLAS threads, 0.7 ms with one). Set before numpy loads;
# the loader process inherits it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import logging

from movierec_common import logs, metrics, security, signing
from movierec_common.graceful_stop import wait_for_termination
from movierec_common.grpc_server import build_server
from movierec_common.logs import event
from recommender_service.fresh_histories import DEFAULT_MAX_TOTAL, MAX_PER_USER

log = logging.getLogger("movierec.recommender")
SERVICE_NAME = "movierec.v1.Recommender"
# Calls that change something: they need a token whenever tokens are configured, and beyond loopback
# without tokens they are refused (anyone on the network could write), while reads stay open.
WRITE_METHODS = (f"/{SERVICE_NAME}/RecordInteractions",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="movierec-recommender", description=__doc__)
    parser.add_argument("--port", type=int, default=50052, help="port to listen on (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--model-root", required=True,
                        help="folder or s3://bucket/prefix the trainer publishes versions into "
                             "(S3 settings from the AWS_* environment)")
    parser.add_argument("--cache-dir", default=None,
                        help="where versions from an object-store root are copied before loading, in a "
                             "folder of this process's own removed at exit (default: the system temp folder)")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new versions")
    parser.add_argument("--version", type=int, default=None, help="serve this version only (pin / rollback)")
    parser.add_argument("--threads", type=int, default=8, help="request worker threads")
    parser.add_argument("--ranking-mb", type=float, default=256.0,
                        help="memory for per-user rankings computed at load (the most active users first; "
                             "the rest are answered live); 0 = answer every call live")
    parser.add_argument("--loader-cpus", type=int, default=None, metavar="N",
                        help="cores the version loader (a lowest-priority helper process) may run on: the last N; "
                             "0 = any core. Default 1: calls woken on a core where the loader runs wait for it "
                             "(a reload's p99 at a million movies, one call in flight: see the README)")
    parser.add_argument("--answer-cache-mb", type=float, default=64.0,
                        help="memory for answers kept for repeated calls (known users, k up to 100; the least "
                             "recently used go first); 0 = keep none")
    parser.add_argument("--require-token", action="store_true",
                        help="protect every Recommender call with a bearer token (health stays open); "
                             "RecordInteractions needs one whenever tokens are configured")
    parser.add_argument("--events", default=None, metavar="URL",
                        help="where RecordInteractions stores interactions: sqlite:///PATH (WAL; replicas on one "
                             "machine share the file), postgresql://... (replicas on many machines share it), or "
                             "none (off); default: events.sqlite in the per-user state folder "
                             "($XDG_STATE_HOME/movierec, else ~/.local/state/movierec)")
    parser.add_argument("--fresh-interactions-max", type=int, default=DEFAULT_MAX_TOTAL, metavar="N",
                        help="interactions held in memory as fresh histories (what users did after the served "
                             f"version was trained; the newest {MAX_PER_USER:,} per user), about 16 bytes each; past "
                             "it, the users least recently active are forgotten first")
    parser.add_argument("--log-level", default=os.environ.get("MOVIEREC_LOG_LEVEL", "info"))
    metrics.add_arguments(parser)
    security.add_arguments(parser)
    signing.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.poll_seconds <= 0:
        parser.error("--poll-seconds must be positive")
    if args.version is not None and args.version < 1:
        parser.error("--version must be a positive version number")
    if args.ranking_mb < 0:
        parser.error("--ranking-mb must not be negative")
    if args.loader_cpus is not None and args.loader_cpus < 0:
        parser.error("--loader-cpus must not be negative (0 = any core)")
    if args.answer_cache_mb < 0:
        parser.error("--answer-cache-mb must not be negative")
    if args.fresh_interactions_max < 1:
        parser.error("--fresh-interactions-max must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.configure(args.log_level)
    try:
        interceptors, credentials = security.from_args(
            args, protected=None if args.require_token else WRITE_METHODS, require_tokens=args.require_token,
            what="--require-token")
    except security.SecurityConfigError as exc:
        raise SystemExit(f"movierec-recommender: {exc}") from exc
    if not interceptors and not security.is_loopback(args.host):
        interceptors.append(security.MethodsRefused(
            WRITE_METHODS, f"this recommender listens beyond loopback ({args.host}) without tokens, so it takes "
                           "no writes: configure tokens (--token-file or $MOVIEREC_TOKENS) to record interactions"))
    from movierec_common.event_store import open_store

    try:
        events = open_store(args.events)
    except Exception as exc:  # a bad URL, or a store that cannot be opened: say so before serving anything
        raise SystemExit(f"movierec-recommender: --events {args.events or '(default)'}: {exc}") from exc
    with_metrics = metrics.serve_from_args(args, "recommender")
    import faiss

    from movierec.v1 import recommender_pb2_grpc
    from recommender_service.feedback_loop import FeedbackLoop
    from recommender_service.fresh_histories import FreshHistories
    from recommender_service.isolation import LOADER_CPUS, IsolatedLoader
    from recommender_service.registry import ModelRegistry
    from recommender_service.servicer import RecommenderServicer

    # One search thread per call: concurrency comes from the request threads.
    faiss.omp_set_num_threads(1)
    loader = IsolatedLoader(ranking_budget_bytes=int(args.ranking_mb * 1024 * 1024),
                            cpus=LOADER_CPUS if args.loader_cpus is None else args.loader_cpus)
    loader.start()
    registry = ModelRegistry(args.model_root, poll_seconds=args.poll_seconds, pinned_version=args.version,
                             cache_dir=args.cache_dir, loader=loader, publish_keys=args.publish_keys)
    loop = None if events is None else FeedbackLoop(events, registry.current,
                                                    FreshHistories(max_total=args.fresh_interactions_max))
    servicer = RecommenderServicer(registry, answer_cache_bytes=int(args.answer_cache_mb * 1024 * 1024), loop=loop)
    handle = build_server(
        f"{args.host}:{args.port}", [SERVICE_NAME],
        lambda server: recommender_pb2_grpc.add_RecommenderServicer_to_server(servicer, server),
        max_workers=args.threads, interceptors=interceptors, credentials=credentials, with_metrics=with_metrics,
    )
    registry.on_change = lambda model: handle.set_serving(True)
    registry.start()
    if loop is not None:
        loop.start()
    event(log, "recommender listening", port=handle.port, model_root=args.model_root, pinned_version=args.version,
          events="off" if events is None else events.description)
    print(f"movierec-recommender listening on {args.host}:{handle.port}", flush=True)
    if with_metrics:
        print(f"movierec-recommender metrics at http://{args.host}:{args.metrics_port}/metrics", flush=True)

    def stop() -> None:
        registry.stop()
        loader.shutdown()
        if loop is not None:
            loop.stop()

    wait_for_termination(handle, on_stop=stop)


if __name__ == "__main__":
    main()
