"""``movierec-trainer``: the Trainer gRPC server process."""

from __future__ import annotations

import argparse
import atexit
import logging
import os

from movierec_common import logs, metrics, security, signing
from movierec_common.graceful_stop import wait_for_termination
from movierec_common.grpc_server import build_server
from movierec_common.logs import event

log = logging.getLogger("movierec.trainer")
SERVICE_NAME = "movierec.v1.Trainer"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="movierec-trainer", description=__doc__)
    parser.add_argument("--port", type=int, default=50051, help="port to listen on (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--model-root", required=True,
                        help="folder or s3://bucket/prefix where versions are published "
                             "(S3 settings from the AWS_* environment)")
    parser.add_argument("--data-root", default=None, help="folder that custom dataset paths are relative to")
    parser.add_argument("--movielens-dir", default=os.environ.get("MOVIELENS_DIR"),
                        help="GroupLens ml-100k folder or ml-100k.zip "
                             "(default: $MOVIELENS_DIR, then tensorflow-datasets)")
    parser.add_argument("--queue-size", type=int, default=4, help="jobs that may wait behind the running one")
    parser.add_argument("--keep-versions", type=int, default=5,
                        help="valid versions to keep, besides pinned and served ones (0 = all)")
    parser.add_argument("--lease-wait", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for another trainer's lease on the model root before refusing "
                             "to start (default 120; 0 = refuse at once)")
    parser.add_argument("--stale-staging-age", type=float, default=900.0, metavar="SECONDS",
                        help="remove unfinished publishes (temp folders, uploads without metadata.json) only "
                             "once untouched this long (default 900)")
    parser.add_argument("--min-recall", type=float, default=0.0,
                        help="quality floor: refuse to publish below this validation Recall@10")
    parser.add_argument("--ann-min-items", type=int, default=None,
                        help="catalogues with at least this many movies ship an approximate (faiss) index; "
                             "smaller ones are served exactly (default 100000)")
    parser.add_argument("--max-dataset-bytes", type=_positive_int, default=None, metavar="BYTES",
                        help="refuse dataset files larger than this, unread (default 2 GiB: fits ML-25M's ratings.csv)")
    parser.add_argument("--workers", type=_positive_int, default=1,
                        help="data-parallel workers per neural job, on Ray Train (default 1: in-process, Ray "
                             "never started); also the most a request may ask for")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="run multi-worker jobs on this existing Ray cluster (default: a local Ray the "
                             "trainer starts on first use and stops with itself)")
    parser.add_argument("--tensorboard-dir", default=None, metavar="DIR",
                        help="where each job writes TensorBoard event files, in a folder per job id "
                             "(default: <model root>/.runs)")
    parser.add_argument("--require-token-for-reads", action="store_true",
                        help="protect the reads (GetJob, ListJobs, WatchJob, ListVersions, ListHiddenMovies) with a "
                             "token too (health stays open)")
    parser.add_argument("--events", default=None, metavar="URL",
                        help="the event store the recommenders record interactions in, which jobs may train on "
                             "(TrainRequest dataset.interactions) and ListVersions reads online hit rates from: "
                             "sqlite:///PATH, postgresql://..., or none (off); default: events.sqlite in the "
                             "per-user state folder ($XDG_STATE_HOME/movierec, else ~/.local/state/movierec). "
                             "Opened on first use, so the trainer starts while the database is down")
    parser.add_argument("--retrain-after-interactions", type=_positive_int, default=None, metavar="N",
                        help="queue a job with the last successful job's settings plus the recorded interactions "
                             "once N have arrived since the last one trained on or queued")
    parser.add_argument("--retrain-every", type=_duration, default=None, metavar="DURATION",
                        help="queue such a job every DURATION (90s, 15m, 2h, 1d or plain seconds) when there are "
                             "new interactions")
    parser.add_argument("--log-level", default=os.environ.get("MOVIEREC_LOG_LEVEL", "info"))
    metrics.add_arguments(parser)
    security.add_arguments(parser)
    signing.add_arguments(parser)
    args = parser.parse_args(argv)
    if (args.retrain_after_interactions or args.retrain_every) and (args.events or "").strip().lower() == "none":
        parser.error("--retrain-after-interactions and --retrain-every need interactions: not with --events none")
    return args


def _duration(text: str) -> float:
    from trainer_service.retrain_policy import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# Changing what is trained, published or served needs a token whenever tokens are configured; reading
# job state and versions needs one only with --require-token-for-reads. Every Trainer RPC is in one of
# the two (a test compares them with the service and with the README's table).
MUTATING_METHODS = (f"/{SERVICE_NAME}/Train", f"/{SERVICE_NAME}/CancelJob", f"/{SERVICE_NAME}/PinVersion",
                    f"/{SERVICE_NAME}/HideMovies", f"/{SERVICE_NAME}/UnhideMovies")
READ_METHODS = (f"/{SERVICE_NAME}/GetJob", f"/{SERVICE_NAME}/ListJobs", f"/{SERVICE_NAME}/WatchJob",
                f"/{SERVICE_NAME}/ListVersions", f"/{SERVICE_NAME}/ListHiddenMovies")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.configure(args.log_level)
    try:
        beyond_loopback = not security.is_loopback(args.host)
        interceptors, credentials = security.from_args(
            args, protected=MUTATING_METHODS + (READ_METHODS if args.require_token_for_reads else ()),
            require_tokens=beyond_loopback or args.require_token_for_reads,
            what=(f"a trainer listening on {args.host} (beyond loopback)" if beyond_loopback
                  else "--require-token-for-reads"))
    except security.SecurityConfigError as exc:
        raise SystemExit(f"movierec-trainer: {exc}") from exc
    # One trainer per root: taken before anything in the root is touched (stale staging, job records).
    from movierec_common.model_root import RootUnreachable
    from movierec_common.root_lease import RootLease, RootLeaseHeld

    lease = RootLease(args.model_root)
    try:
        lease.acquire(wait_seconds=args.lease_wait)
    except (RootLeaseHeld, RootUnreachable) as exc:
        raise SystemExit(f"movierec-trainer: {exc}") from exc
    atexit.register(lease.release)  # also when start-up fails below; stop() does it first
    from movierec_common.event_store import open_store

    try:
        events = open_store(args.events)  # connects on first use: the trainer starts while the database is down
    except Exception as exc:  # a bad URL: say so before serving anything
        raise SystemExit(f"movierec-trainer: --events {args.events or '(default)'}: {exc}") from exc
    with_metrics = metrics.serve_from_args(args, "trainer")
    # Imported after logging is set up: they import TensorFlow.
    from movierec.v1 import trainer_pb2_grpc
    from trainer_service.config import TrainerConfig
    from trainer_service.job_manager import JobManager
    from trainer_service.jobs import JobStore, TrainSpec
    from trainer_service.pipeline import run_job
    from trainer_service.publisher import remove_stale_temp_folders
    from trainer_service.retrain_policy import PolicySettings, RetrainPolicy
    from trainer_service.servicer import TrainerServicer
    from trainer_service.train_request import resolve_workers, validate_spec

    config = TrainerConfig(
        model_root=args.model_root, data_root=args.data_root, movielens_dir=args.movielens_dir,
        queue_size=args.queue_size, keep_versions=args.keep_versions, min_validation_recall_at_10=args.min_recall,
        **({} if args.ann_min_items is None else {"ann_min_items": args.ann_min_items}),
        **({} if args.max_dataset_bytes is None else {"max_dataset_bytes": args.max_dataset_bytes}),
        workers=args.workers, ray_address=args.ray_address, tensorboard_dir=args.tensorboard_dir,
        stale_staging_seconds=args.stale_staging_age,
        publish_keys=args.publish_keys, events=events,
    )
    remove_stale_temp_folders(config.model_root, min_age_seconds=config.stale_staging_seconds)
    ray_training = None
    if config.workers > 1:
        from trainer_service.distributed import RayTraining  # the only way Ray gets imported

        ray_training = RayTraining(config.ray_address, config.workers)
        atexit.register(ray_training.shutdown)  # also when start-up fails below; stop() does it first
        try:
            ray_training.connect()  # here, in the main thread: see RayTraining.connect
        except Exception as exc:
            ray_training.shutdown()
            raise SystemExit(f"movierec-trainer: cannot start or reach Ray "
                             f"({config.ray_address or 'local'}): {exc}") from exc
    elif config.ray_address:
        event(log, "--ray-address ignored: --workers is 1, so every job trains in-process", logging.WARNING)
    manager = JobManager(
        JobStore(config.model_root),
        lambda job, ctx: run_job(job, ctx, config, ray_training),
        queue_size=config.queue_size,
    )
    servicer = TrainerServicer(manager, config)
    policy = None
    settings = PolicySettings(after_interactions=args.retrain_after_interactions, every_seconds=args.retrain_every)
    if settings.enabled:
        assert events is not None  # parse_args refuses the policy with --events none

        def validate(spec: TrainSpec) -> None:  # the Train call's checks
            validate_spec(spec, config)
            resolve_workers(spec.workers, config)

        policy = RetrainPolicy(settings, manager, events, validate)
    handle = build_server(
        f"{args.host}:{args.port}", [SERVICE_NAME],
        lambda server: trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, server),
        interceptors=interceptors, credentials=credentials, with_metrics=with_metrics,
    )
    handle.set_serving(True)
    event(log, "trainer listening", port=handle.port, model_root=config.model_root, workers=config.workers,
          events="off" if events is None else events.description, retrain=settings.describe())
    if policy is not None:
        policy.start()
    print(f"movierec-trainer listening on {args.host}:{handle.port}", flush=True)
    if with_metrics:
        print(f"movierec-trainer metrics at http://{args.host}:{args.metrics_port}/metrics", flush=True)

    def stop() -> None:
        if policy is not None:
            policy.stop()  # queues nothing more
        manager.shutdown(timeout=30)
        if ray_training is not None:
            ray_training.shutdown()  # a local Ray goes with the trainer
        if events is not None:
            events.close()
        lease.release()  # after the last job: a trainer waiting in a rolling deploy starts at once

    # No balancer in front: nothing to drain for. The budget covers a job's
    # cancellation (manager.shutdown) and a local Ray's stop.
    wait_for_termination(handle, on_stop=stop, drain=0.0, stop_budget=40.0)


if __name__ == "__main__":
    main()
