"""Quality benchmark: every model kind on MovieLens 100K ua.base -> ua.test.

Trains each kind through the same ``train_model`` the trainer service uses, so
the table reflects what users get, and measures the popularity and EASE^R
reference points in the same run so numbers are always compared like for like.
Kinds that choose settings themselves (dlae's lambda and dropout, ease_blend's
weight) choose them on a validation split carved from ua.base; the choices are
printed per seed and kept in each run's ``extra``.

    .venv/bin/python -m benchmarks.quality [--movielens-dir DIR] [--seeds 0,1,2] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from trainer_service.data import Ratings, Split, load_movielens_100k, make_split
from trainer_service.evaluation import evaluate_scores, popularity_vectors
from trainer_service.hyperparams import MODEL_KINDS, resolve_hyperparameters

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "quality.json"
METRICS = ("recall_at_10", "ndcg_at_10", "recall_at_50")
TINY_USERS = 150


def subset_users(split: Split, n_users: int) -> Split:
    """The same split restricted to the first ``n_users`` users, for a smoke-sized run."""
    data = split.data
    keep = data.users < n_users
    new_position = np.cumsum(keep) - 1
    small = replace(
        data, user_ids=data.user_ids[:n_users], users=data.users[keep], items=data.items[keep],
        ratings=data.ratings[keep], timestamps=data.timestamps[keep],
    )
    return Split(data=small, train=new_position[split.train[keep[split.train]]],
                 test=new_position[split.test[keep[split.test]]], name=f"{split.name} (first {n_users} users)")


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def run(movielens_dir: str | None, kinds, seeds, tiny: bool) -> dict:
    from trainer_service.training import train_model  # imports TensorFlow; keep --help fast

    data, used = load_movielens_100k(movielens_dir)
    split = make_split(data, "ua", 0, seed=0)
    if tiny:
        split = subset_users(split, TINY_USERS)
    train_csr, test_csr = split.train_csr(), split.test_csr()
    rows = []
    started = time.monotonic()
    pop_users, pop_items = popularity_vectors(train_csr, split.data.n_items)
    pop = evaluate_scores(pop_users, pop_items, train_csr, test_csr)
    rows.append({"kind": "popularity", "seeds": [], "runs": [{"seed": None, "metrics": pop, "train_seconds": 0.0,
                                                               "final_loss": None}]})
    for kind in kinds:
        overrides = {"epochs": 1, "batch_size": 4096, "patience": 1} if tiny else {}
        hparams = resolve_hyperparameters(kind, overrides)
        runs = []
        for seed in seeds:
            model = train_model(kind, split, hparams, seed=seed)
            metrics = evaluate_scores(model.user_vectors, model.item_vectors, train_csr, test_csr)
            runs.append({
                "seed": seed, "metrics": metrics, "train_seconds": model.train_seconds,
                "final_loss": model.loss_history[-1] if model.loss_history else None,
                "epochs_run": model.epochs_run, "best_epoch": model.best_epoch,
                "validation_metrics": model.validation_metrics, "extra": model.extra,
            })
            chosen = {k: v for k, v in model.extra.items() if isinstance(v, (int, float))}
            print(f"  {kind} seed {seed}: recall@10 {metrics['recall_at_10']:.4f} "
                  f"ndcg@10 {metrics['ndcg_at_10']:.4f} in {model.train_seconds:.1f}s"
                  + (f" (chosen on validation: {chosen})" if chosen else ""), file=sys.stderr, flush=True)
        rows.append({"kind": kind, "seeds": list(seeds), "hyperparameters": asdict(hparams), "runs": runs})
    for row in rows:
        row["summary"] = {name: _summary([r["metrics"][name] for r in row["runs"]]) for name in METRICS}
        row["summary"]["train_seconds"] = _summary([r["train_seconds"] for r in row["runs"]])
        losses = [r["final_loss"] for r in row["runs"] if r["final_loss"] is not None]
        row["summary"]["final_loss"] = _summary(losses) if losses else None
    return {
        "protocol": "implicit; all test ratings relevant; train items excluded; all other items ranked; "
                    "mean over users with test items; NDCG binary gains",
        "split": split.name, "data_source": data.source, "data_fingerprint": data.fingerprint, "data_path": used,
        "tiny": tiny, "seeds": list(seeds), "wall_seconds": time.monotonic() - started,
        "python": platform.python_version(), "machine": platform.machine(), "rows": rows,
    }


def format_table(result: dict) -> str:
    def cell(summary):
        return f"{summary['mean']:.4f} ± {summary['std']:.4f}"

    header = f"{'kind':<18} {'Recall@10':>17} {'NDCG@10':>17} {'Recall@50':>17} {'train s':>13} {'final loss':>10}  seeds"
    lines = [f"{result['split']} — {result['data_source']}", header, "-" * len(header)]
    for row in result["rows"]:
        s = row["summary"]
        loss = f"{s['final_loss']['mean']:.4f}" if s["final_loss"] else "-"
        seconds = f"{s['train_seconds']['mean']:.1f} ± {s['train_seconds']['std']:.1f}"
        seeds = ",".join(str(x) for x in row["seeds"]) or "-"
        lines.append(f"{row['kind']:<18} {cell(s['recall_at_10']):>17} {cell(s['ndcg_at_10']):>17} "
                     f"{cell(s['recall_at_50']):>17} {seconds:>13} {loss:>10}  {seeds}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens-dir", default=None, help="GroupLens ml-100k folder or zip (else MOVIELENS_DIR)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the JSON results")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--kinds", default=",".join(MODEL_KINDS), help="comma-separated model kinds")
    parser.add_argument("--tiny", action="store_true",
                        help=f"smoke budget: 1 epoch, 1 seed, first {TINY_USERS} users (keeps the script tested)")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in MODEL_KINDS]
    if unknown:
        parser.error(f"unknown kinds {unknown}; expected {', '.join(MODEL_KINDS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.tiny:
        seeds = seeds[:1]
    result = run(args.movielens_dir, kinds, seeds, args.tiny)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(format_table(result))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
