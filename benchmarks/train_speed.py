"""Training speed of the neural kinds: plain AdamW against lazy embedding updates, side by side.

Three parts, each comparing the old path (``adamw``: every table updated
densely) with the new one (``lazy``: ``trainer_service.embedding_optimizer``'s
batch-rows-only update of large tables), interleaved in one run so both see
the same load on a shared machine:

* **step** (1,000,000 movies x 64, 50,000 users, batch 1,024, sampled
  softmax, XLA): milliseconds per training step, from the compiled train
  function alone (no callbacks, no input pipeline), in alternating rounds.
  ``lazy-nojit`` (the same optimizer without XLA) shows whether XLA keeps the
  sparse update sparse.
* **sweep**: the same step at several catalogue sizes, to find from which
  table size the lazy update pays (``SPARSE_UPDATE_MIN_ROWS``).
* **epoch**: ``two_tower`` trained through ``train_model`` (validation,
  early-stopping bookkeeping and all) on ``movierec-synth`` data, each
  variant in a fresh process, alternating; seconds per epoch and Recall@10 on
  a last-rating-per-user holdout against popularity. ``--shape ml25m-sample``
  is a 5M-rating sample of MovieLens 25M's shape (a fifth of its users, all
  its movies); ``--shape million`` is ``benchmarks/scale.py``'s part (a): 1,000,000 movies, 50,000
  users, 2,000,000 ratings.

Run ``python benchmarks/train_speed.py --part step`` (a few minutes), or
``--tiny`` for a smoke run. It prints a table and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repo importable
    sys.path.insert(0, str(REPO_ROOT))

SHAPES = {
    "ml25m-sample": {"users": 32_508, "movies": 62_423, "ratings": 5_000_019, "clusters": 24},
    "million": {"users": 50_000, "movies": 1_000_000, "ratings": 2_000_000, "clusters": 24},  # scale.py's (a)
}
TINY_SHAPE = {"users": 1_000, "movies": 30_000, "ratings": 20_000, "clusters": 24}
SWEEP_MOVIES = (2_000, 20_000, 62_423, 200_000, 1_000_000)
# The old path: no table is large enough for lazy updates.
NEVER = 10**12


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("step", "sweep", "epoch"), default="step")
    parser.add_argument("--variants", default="adamw,lazy,lazy-nojit",
                        help="step: comma-separated of adamw, lazy, adamw-nojit, lazy-nojit; "
                             "epoch: of adamw, lazy, lazy-spe1 (lazy without several steps per execution), lazy-nojit")
    parser.add_argument("--users", type=int, default=50_000, help="step: user table rows")
    parser.add_argument("--movies", type=int, default=1_000_000, help="step: movie table rows")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30, help="step: steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="step: timed rounds per variant")
    parser.add_argument("--shape", choices=tuple(SHAPES), default="ml25m-sample", help="epoch: data shape")
    parser.add_argument("--epochs", type=int, default=1, help="epoch: two_tower epochs per run")
    parser.add_argument("--repeats", type=int, default=1, help="epoch: runs per variant (alternating)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lazy-min-rows", type=int, default=None,
                        help="rows from which a table is lazy in the lazy variants (default: the trainer's)")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "movierec-train-speed"),
                        help="epoch: generated data, kept for the next run")
    parser.add_argument("--out", default=None, help="JSON (default benchmarks/results/train_speed-<part>.json)")
    parser.add_argument("--tiny", action="store_true", help="small sizes and short runs, for a smoke test")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.users, args.movies, args.steps, args.rounds, args.repeats = 500, 30_000, 3, 2, 1
        args.lazy_min_rows = args.lazy_min_rows or 10_000  # so the tiny tables take the lazy path
    if args.out is None:
        args.out = str(BENCH_DIR / "results" / f"train_speed-{args.part}.json")
    return args


# ----------------------------------------------------------------------------
# step and sweep: the compiled train function alone
# ----------------------------------------------------------------------------

def _step_model(variant: str, users: int, movies: int, batch_size: int):
    """A compiled two_tower and an endless iterator of Zipf-drawn batches of its shape."""
    from trainer_service import embedding_optimizer, models
    from trainer_service.training import resolve_hyperparameters

    tf = models.tf
    hp = resolve_hyperparameters("two_tower", {"batch_size": batch_size})
    model = models.TwoTowerModel(users, movies, hp, sampled=True)
    plain = variant.startswith("adamw")
    optimizer = embedding_optimizer.choose(model, hp.learning_rate, hp.weight_decay, replicas=1,
                                           min_rows=NEVER if plain else None,
                                           deferred_min_rows=NEVER if plain else None)
    model.compile(optimizer=optimizer.optimizer, jit_compile=not variant.endswith("-nojit"))
    rng = np.random.default_rng(0)
    n = batch_size * 64
    popularity = 1.0 / (np.arange(movies) + 3.0)
    popularity /= popularity.sum()
    items = rng.choice(movies, size=n, p=popularity).astype(np.int32)
    features = {"user": rng.integers(0, users, n, dtype=np.int32), "item": items,
                "item_probability": popularity[items].astype(np.float32)}
    dataset = tf.data.Dataset.from_tensor_slices(features).batch(batch_size, drop_remainder=True).repeat()
    return model, model.make_train_function(), iter(dataset), optimizer.description


def step_times(variants: list[str], users: int, movies: int, batch_size: int, steps: int, rounds: int) -> dict:
    """Median ms per step of each variant, timed in alternating rounds after a warm-up."""
    runs = {variant: _step_model(variant, users, movies, batch_size) for variant in variants}
    for _, train, batches, _ in runs.values():  # compile, build the slots
        for _ in range(3):
            train(batches)["loss"].numpy()
    samples: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant, (_, train, batches, _) in runs.items():
            started = time.perf_counter()
            for _ in range(steps):
                logs = train(batches)
            logs["loss"].numpy()
            samples[variant].append((time.perf_counter() - started) * 1000 / steps)
    return {variant: {"median_ms": round(statistics.median(ms), 2), "rounds_ms": [round(x, 2) for x in ms],
                      "optimizer": runs[variant][3]} for variant, ms in samples.items()}


# ----------------------------------------------------------------------------
# epoch: train_model on generated data, one fresh process per run
# ----------------------------------------------------------------------------

def child_epoch(data: str, variant: str, epochs: int, batch_size: int, seed: int) -> dict:
    from trainer_service import embedding_optimizer, neural_kinds
    from trainer_service.data import load_ratings_files
    from trainer_service.evaluation import EVALUATION_MAX_SCORES, evaluate_scores, popularity_vectors
    from trainer_service.splits import make_split
    from trainer_service.training import resolve_hyperparameters, train_model

    name = variant
    if "@" in variant:  # lazy@M: the lazy tables' learning rate is M times the run's
        variant, multiplier = variant.split("@")
        embedding_optimizer.LAZY_LEARNING_RATE_MULTIPLIER = float(multiplier)
    if variant == "adamw":  # the old path: no lazy or deferred table, hence one step per execution too
        embedding_optimizer.SPARSE_UPDATE_MIN_ROWS = NEVER
        embedding_optimizer.DEFERRED_UPDATE_MIN_ROWS = NEVER
    elif variant == "lazy-spe1":  # lazy updates alone, one step per execution
        neural_kinds.LARGE_RUN_STEPS_PER_EXECUTION = 1
    elif variant == "lazy-nojit":  # lazy updates and 16 steps per execution, without XLA
        neural_kinds.LARGE_RUN_JIT_COMPILE = False
    ratings = load_ratings_files(data, "ratings.csv", "movies.csv")
    split = make_split(ratings, "last_n_per_user", 1, seed)
    hp = resolve_hyperparameters("two_tower", {"epochs": epochs, "batch_size": batch_size, "patience": epochs})
    seconds: list[float] = []
    last = [0.0]

    def on_epoch(report) -> None:
        seconds.append(round(report.elapsed_seconds - last[0], 1))
        last[0] = report.elapsed_seconds
        print(f"  {name} epoch {report.epoch}: {seconds[-1]} s, loss {report.loss:.3f}, validation "
              f"recall@10 {report.validation.get('recall_at_10', 0.0):.4f}", flush=True)

    model = train_model("two_tower", split, hp, seed, on_epoch=on_epoch)
    train_csr, test_csr = split.train_csr(), split.test_csr()
    ours = evaluate_scores(model.user_vectors, model.item_vectors, train_csr, test_csr,
                           max_scores=EVALUATION_MAX_SCORES)
    popular = evaluate_scores(*popularity_vectors(train_csr, ratings.n_items), train_csr, test_csr,
                              max_scores=EVALUATION_MAX_SCORES)
    return {"variant": name, "optimizer": model.selection.get("optimizer"), "epoch_seconds": seconds,
            "train_seconds": round(model.train_seconds, 1), "loss": [round(x, 4) for x in model.loss_history],
            "validation_recall_at_10": [round(h["recall_at_10"], 4) for h in model.validation_history],
            "recall_at_10": round(ours["recall_at_10"], 4),
            "popularity_recall_at_10": round(popular["recall_at_10"], 4),
            "users_evaluated": int(ours["users_evaluated"])}


def run_child(args, variant: str, data: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--part", "epoch", "--data", str(data),
               "--variants", variant, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--seed", str(args.seed), *(["--lazy-min-rows", str(args.lazy_min_rows)] if args.lazy_min_rows else [])]
    process = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, check=True)
    lines = process.stdout.rstrip().splitlines()
    for line in lines[:-1]:
        print(line, flush=True)
    return json.loads(lines[-1])


def epoch_runs(args) -> dict:
    from trainer_service import synth

    shape = TINY_SHAPE if args.tiny else SHAPES[args.shape]
    data = Path(args.work_dir) / ("tiny" if args.tiny else args.shape)
    if not (data / "ratings.csv").exists():
        print(f"generating {shape}...", flush=True)
        synth.generate(data, shape["users"], shape["movies"], shape["ratings"], seed=args.seed,
                       clusters=shape["clusters"])
    variants = args.variants.split(",")
    runs = [run_child(args, variant, data) for _ in range(args.repeats) for variant in variants]
    summary = {}
    for variant in variants:
        mine = [run for run in runs if run["variant"] == variant]
        summary[variant] = {"median_epoch_seconds": statistics.median(s for r in mine for s in r["epoch_seconds"]),
                            "median_recall_at_10": statistics.median(r["recall_at_10"] for r in mine)}
    return {"shape": shape, "runs": runs, "summary": summary}


# ----------------------------------------------------------------------------

def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.lazy_min_rows:
        from trainer_service import embedding_optimizer

        embedding_optimizer.SPARSE_UPDATE_MIN_ROWS = args.lazy_min_rows
    if args.child:
        print(json.dumps(child_epoch(args.data, args.variants, args.epochs, args.batch_size, args.seed)), flush=True)
        return 0
    report: dict = {"part": args.part, "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                    "load_before": load(), "batch_size": args.batch_size, "tiny": args.tiny}
    variants = args.variants.split(",")
    if args.part == "step":
        report["shape"] = {"users": args.users, "movies": args.movies}
        report["steps"] = step_times(variants, args.users, args.movies, args.batch_size, args.steps, args.rounds)
        rows = [(variant, r["median_ms"], r["optimizer"]) for variant, r in report["steps"].items()]
    elif args.part == "sweep":
        sizes = (2_000, 30_000) if args.tiny else SWEEP_MOVIES
        report["sweep"] = {str(movies): step_times(variants, args.users, movies, args.batch_size, args.steps,
                                                   args.rounds) for movies in sizes}
        rows = [(f"{movies} movies, {variant}", r["median_ms"], r["optimizer"])
                for movies, result in report["sweep"].items() for variant, r in result.items()]
    else:
        report["epoch"] = epoch_runs(args)
        rows = [(variant, s["median_epoch_seconds"], f"Recall@10 {s['median_recall_at_10']}")
                for variant, s in report["epoch"]["summary"].items()]
    report["load_after"] = load()
    unit = "s/epoch" if args.part == "epoch" else "ms/step"
    print(f"\n| variant | {unit} | |\n|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")
    print(f"load average before {report['load_before']}, after {report['load_after']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
