"""``movierec``: the command line for the trainer and recommender services.

Why it is a thin layer over ``clients``: the CLI is the first thing an
operator reaches for, so it must exercise exactly the code applications use
(same retries, deadlines, credentials and error mapping), and only add
presentation: tables for people, ``--json`` for scripts, a progress bar for
training, and one-line errors with meaningful exit codes (0 ok, 1 the call
failed, 2 bad usage, 130 interrupted) instead of tracebacks. How results read
is ``clients.render``; the filter flags are ``clients.filter_options``, ``train``'s
flags and the options they ask for ``clients.train_options``.

Global options may come before or after the subcommand. Tokens are never
taken on the command line (shell history, ``ps``): use ``--token-file``,
``$MOVIEREC_TOKEN`` or ``$MOVIEREC_TOKEN_FILE``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import render
from .client import DEFAULT_TIMEOUT, RecommenderClient, TrainerClient
from .errors import ConfigurationError, InvalidArgument, MovieRecError
from .filter_options import FilterUsageError, add_filter_options, filter_from_args, id_flags, movie_id_list
from .flags import refuse_token_flags
from .train_options import add_train_options, positive_int, train_options
from .types import Interaction, Job

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    _tolerate_unencodable_output()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if hasattr(args, "command_parser"):  # a command with filter flags
            try:
                args.filter = filter_from_args(args)
            except FilterUsageError as exc:
                args.command_parser.error(str(exc))
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (ConfigurationError, InvalidArgument) as exc:
        _print_error(exc)
        return EXIT_USAGE
    except MovieRecError as exc:
        _print_error(exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `movierec jobs | head`
        _silence_stdout()
        return EXIT_OK


def _print_error(exc: MovieRecError) -> None:
    message = " ".join(str(exc).split())  # server details may span lines
    if isinstance(exc, ConfigurationError):
        print(f"error: {message}", file=sys.stderr)
    else:
        print(f"error: {message} ({exc.code.name})", file=sys.stderr)


# --------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="movierec",
        description="Train movie recommenders and ask them for recommendations.",
        epilog="Tokens are read from --token-file, $MOVIEREC_TOKEN or $MOVIEREC_TOKEN_FILE.",
    )
    _add_global_options(parser, defaults=True)
    # The same options on every subcommand, without defaults, so they may also
    # follow the subcommand without overwriting values given before it.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    train = command("train", cmd_train, "queue a training job")
    add_train_options(train)

    jobs = command("jobs", cmd_jobs, "list training jobs, newest first")
    jobs.add_argument("--limit", type=positive_int, default=50, help="at most N jobs (default 50)")
    command("job", cmd_job, "show one training job").add_argument("job_id", metavar="ID")
    command("watch", cmd_watch, "follow a training job until it ends").add_argument("job_id", metavar="ID")
    command("cancel", cmd_cancel, "cancel a queued or running job").add_argument("job_id", metavar="ID")

    recommend = command("recommend", cmd_recommend, "top-k movies for a user")
    recommend.add_argument("user_id", metavar="USER_ID")
    recommend.add_argument("-k", type=positive_int, default=10, help="number of movies (default 10)")
    recommend.add_argument(
        "--include-seen", action="store_true", help="also recommend movies the user already rated"
    )
    recommend.add_argument(
        "--recent",
        type=_recent_movie_ids,
        metavar="ID,ID,...",
        help="movies the user just interacted with, oldest first (at most 1,000): a session; "
        "an unknown user then gets a personal answer",
    )
    _with_filter(recommend)
    recorded = command("record", cmd_record, "store that a user interacted with a movie (RecordInteractions)")
    recorded.add_argument("user_id", metavar="USER_ID")
    recorded.add_argument("movie_id", metavar="MOVIE_ID", type=int)
    recorded.add_argument("--rating", type=float, default=None, help="0.5 to 5 (default: none)")
    recorded.add_argument("--event-id", default=None,
                          help="your id for this interaction, so a resend stores nothing twice (default: a random one)")
    recorded.add_argument("--recommendation-id", default=None, metavar="ID",
                          help="the answer that led to it (what `movierec recommend` printed), if any")
    similar = command("similar", cmd_similar, "movies similar to a movie")
    similar.add_argument("movie_id", metavar="MOVIE_ID", type=int)
    similar.add_argument("-k", type=positive_int, default=10, help="number of movies (default 10)")
    _with_filter(similar)
    command("status", cmd_status, "what the recommender is serving, its genres and hidden movies (with several "
            "replicas: one healthy replica's view; give one address to ask that replica)")

    command("versions", cmd_versions, "list the versions in the model root: metrics, pin, which recommenders "
            "serve each")
    pin = command("pin", cmd_pin, "serve this version on every recommender (rollback) until `movierec unpin`")
    pin.add_argument("version", metavar="VERSION", type=positive_int)
    command("unpin", cmd_unpin, "let every recommender follow the newest valid version again")
    hide = command("hide", cmd_hide, "leave movies out of every answer of every recommender, whatever version it "
                   "serves (a licence ended, a takedown), until `movierec unhide`")
    hide.add_argument("movie_ids", metavar="ID", nargs="+", type=_hidden_movie_ids,
                      help="movie ids (at most 10,000 a call; commas also separate)")
    unhide = command("unhide", cmd_unhide, "take movies off the hidden list")
    unhide.add_argument("movie_ids", metavar="ID", nargs="+", type=_hidden_movie_ids,
                        help="movie ids (commas also separate)")
    command("hidden", cmd_hidden, "list the hidden movies, as the model root holds them")
    return parser


def _with_filter(command: argparse.ArgumentParser) -> None:
    add_filter_options(command)
    command.set_defaults(command_parser=command)  # main() reports flag combinations as this command's usage error


def _add_global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    env = os.environ
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--trainer",
        metavar="HOST:PORT",
        default=default(env.get("MOVIEREC_TRAINER") or TrainerClient.DEFAULT_TARGET),
        help="trainer address (env MOVIEREC_TRAINER, default %(default)s)" if defaults else argparse.SUPPRESS,
    )
    group.add_argument(
        "--recommender",
        metavar="HOST:PORT[,HOST:PORT...]",
        default=default(env.get("MOVIEREC_RECOMMENDER") or RecommenderClient.DEFAULT_TARGET),
        help="recommender address; several replicas as a comma-separated list or one DNS name with a record "
        "per replica (dns:///NAME:PORT) get calls round robin, skipping replicas that are down or not "
        "serving yet (env MOVIEREC_RECOMMENDER, default %(default)s)"
        if defaults
        else argparse.SUPPRESS,
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        default=default(DEFAULT_TIMEOUT),
        help="deadline of each call (default %(default)s)" if defaults else argparse.SUPPRESS,
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine-readable output" if defaults else argparse.SUPPRESS,
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="use TLS with the system's CA roots" if defaults else argparse.SUPPRESS,
    )
    for flag, what in (
        ("--ca-cert", "CA certificate (PEM) to verify the server with; implies --tls"),
        ("--client-cert", "client certificate (PEM) for mutual TLS"),
        ("--client-key", "client private key (PEM) for mutual TLS"),
        ("--token-file", "file holding the bearer token"),
    ):
        group.add_argument(flag, metavar="FILE", default=default(None), help=what if defaults else argparse.SUPPRESS)
    # Without this, argparse would take `--token X` for `--token-file X` and print the token back.
    refuse_token_flags(group, environment="MOVIEREC_TOKEN")


def _recent_movie_ids(text: str) -> list[int]:
    try:
        return movie_id_list(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated movie ids, oldest first, e.g. 50,181,7; got {text!r}"
        ) from None


def _hidden_movie_ids(text: str) -> list[int]:
    try:
        return movie_id_list(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be movie ids, e.g. 123 456 or 123,456; got {text!r}") from None


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


# --------------------------------------------------------------------------- clients


def _connection(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        timeout=args.timeout,
        token_file=args.token_file,
        tls=args.tls,
        root_certificates=args.ca_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
    )


def _trainer(args: argparse.Namespace) -> TrainerClient:
    return TrainerClient(args.trainer, **_connection(args))


def _recommender(args: argparse.Namespace) -> RecommenderClient:
    return RecommenderClient(args.recommender, **_connection(args))


# --------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    options = train_options(args)
    with _trainer(args) as tc:
        job = tc.train(args.model, **options)
        if args.watch:
            return _watch(tc, job, args)
    return _show(args, job, render.job_state)


def cmd_jobs(args: argparse.Namespace) -> int:
    with _trainer(args) as tc:
        jobs = tc.list_jobs(limit=args.limit)
    return _show(args, jobs, render.jobs)


def cmd_job(args: argparse.Namespace) -> int:
    with _trainer(args) as tc:
        job = tc.get_job(args.job_id)
    return _show(args, job, render.job)


def cmd_watch(args: argparse.Namespace) -> int:
    with _trainer(args) as tc:
        return _watch(tc, tc.get_job(args.job_id), args)


def cmd_cancel(args: argparse.Namespace) -> int:
    with _trainer(args) as tc:
        job = tc.cancel_job(args.job_id)
    return _show(args, job, render.job_state)


def cmd_recommend(args: argparse.Namespace) -> int:
    with _recommender(args) as rc:
        recs = rc.recommend(args.user_id, k=args.k, exclude_seen=False if args.include_seen else None,
                            recent=args.recent, filter=args.filter)
    if args.json:
        print(render.json_text(recs))
        return EXIT_OK
    left_out = "hidden movies" if args.include_seen else "seen and hidden movies"
    _notes(render.unknown_note(recs.model_version, recs.unknown_movie_ids, id_flags(args))
           if recs.unknown_movie_ids else None,
           render.short_answer_note(args.k, len(recs), recs.eligible_movies, filtered=args.filter is not None,
                                    left_out=left_out))
    print(render.items(recs.items))
    answer = f", recommendation {recs.recommendation_id}" if recs.recommendation_id else ""
    print(f"model version {recs.model_version}, cold start: {render.yes_no(recs.cold_start)}{answer}")
    return EXIT_OK


def cmd_record(args: argparse.Namespace) -> int:
    interaction = Interaction(user_id=args.user_id, movie_id=args.movie_id, rating=args.rating,
                              event_id=args.event_id, recommendation_id=args.recommendation_id)
    with _recommender(args) as rc:
        recorded = rc.record(interaction)
    if args.json:
        print(render.json_text(recorded))
        return EXIT_OK
    what = "stored" if recorded.stored else "already stored (same content): nothing written"
    print(f"event {recorded.event_ids[0]}: {what}; store position {recorded.watermark}")
    if recorded.unknown_movie_ids:
        _notes(f"note: the served model version does not know movie {args.movie_id} (stored anyway)")
    return EXIT_OK


def cmd_similar(args: argparse.Namespace) -> int:
    with _recommender(args) as rc:
        similar = rc.similar_items(args.movie_id, k=args.k, filter=args.filter)
    if args.json:
        print(render.json_text(similar))
        return EXIT_OK
    _notes(render.unknown_note(similar.model_version, similar.unknown_movie_ids, id_flags(args))
           if similar.unknown_movie_ids else None,
           render.short_answer_note(args.k, len(similar), similar.eligible_movies, filtered=args.filter is not None,
                                    left_out="the movie itself and hidden movies"))
    print(render.similar_heading(similar.movie))
    print(render.items(similar.items))
    print(f"model version {similar.model_version}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with _recommender(args) as rc:
        status = rc.model_status()
    return _show(args, status, render.status)


def cmd_versions(args: argparse.Namespace) -> int:
    with _trainer(args) as tc:
        versions = tc.list_versions()
    if args.json:
        print(render.json_text(versions))
        return EXIT_OK
    print(render.versions(versions))
    _notes(render.online_note(versions))
    line, warning = render.pin_line(versions)
    print(line, file=sys.stderr if warning else sys.stdout)
    return EXIT_OK


def cmd_pin(args: argparse.Namespace) -> int:
    with _trainer(args) as tc:
        pin = tc.pin_version(args.version)
    return _show(args, pin, render.pinned)


def cmd_unpin(args: argparse.Namespace) -> int:
    with _trainer(args) as tc:
        pin = tc.unpin()
    return _show(args, pin, render.unpinned)


def cmd_hide(args: argparse.Namespace) -> int:
    asked = [movie_id for ids in args.movie_ids for movie_id in ids]
    with _trainer(args) as tc:
        hidden = tc.hide_movies(asked)
    return _show(args, hidden, lambda h: render.hidden_changed(h, "hid", asked))


def cmd_unhide(args: argparse.Namespace) -> int:
    asked = [movie_id for ids in args.movie_ids for movie_id in ids]
    with _trainer(args) as tc:
        hidden = tc.unhide_movies(asked)
    return _show(args, hidden, lambda h: render.hidden_changed(h, "unhid", asked))


def cmd_hidden(args: argparse.Namespace) -> int:
    with _trainer(args) as tc:
        hidden = tc.hidden_movies()
    return _show(args, hidden, render.hidden)


def _show(args: argparse.Namespace, value: Any, for_people: Callable[[Any], str]) -> int:
    """What most commands end with: ``--json`` prints the value for programs, otherwise ``for_people``'s text."""
    print(render.json_text(value) if args.json else for_people(value))
    return EXIT_OK


def _notes(*notes: str | None) -> None:
    """Notes go to stderr, so the table on stdout stays the answer alone."""
    for note in notes:
        if note:
            print(note, file=sys.stderr)


# --------------------------------------------------------------------------- watching


def _watch(tc: TrainerClient, job: Job, args: argparse.Namespace) -> int:
    """Follow a job (progress bar on stderr), then print its outcome."""
    final = job
    try:
        if not job.done:
            with _progress_bar(job, disable=args.json) as bar:
                for update in tc.watch_job(job.id):
                    _advance(bar, update)
                    final = update
    except KeyboardInterrupt:
        print(
            f"\nstopped watching; job {job.id} keeps running (movierec cancel {job.id} stops it)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if args.json:
        print(render.json_text(final))
    elif final.state == "SUCCEEDED":
        print(render.succeeded(final))
    else:
        print(render.failed(final), file=sys.stderr)
    return EXIT_OK if final.state == "SUCCEEDED" else EXIT_FAILED


def _progress_bar(job: Job, *, disable: bool) -> Any:  # a tqdm bar
    # Imported late: only `train --watch` / `watch` need it.
    from tqdm import tqdm

    return tqdm(
        total=job.progress.total_epochs or None,
        desc=f"{job.model or 'job'} {job.id}",
        unit="epoch",
        file=sys.stderr,
        disable=disable,
        dynamic_ncols=True,
    )


def _advance(bar: Any, job: Job) -> None:
    progress = job.progress
    if progress.total_epochs and bar.total != progress.total_epochs:
        bar.total = progress.total_epochs
    if progress.epoch > bar.n:
        bar.update(progress.epoch - bar.n)
    postfix = {"phase": progress.phase or job.state.lower()}
    if progress.epoch:
        postfix["loss"] = f"{progress.loss:.4f}"
    bar.set_postfix(postfix, refresh=True)


# --------------------------------------------------------------------------- terminal plumbing


def _tolerate_unencodable_output() -> None:
    # Titles are unicode ("Misérables, Les (1995)"); a non-UTF-8 terminal
    # should get an escape, not a UnicodeEncodeError.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]  # AttributeError: below
        except (AttributeError, ValueError):
            pass


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":  # python -m clients.cli
    sys.exit(main())
