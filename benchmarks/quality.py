"""Quality benchmark on MovieLens 100K: the evaluated model, the model a job serves, and anonymous sessions.

Every kind is trained through the same ``train_model`` the trainer service
uses, so the tables reflect what users get, and the reference points
(popularity, EASE^R) are measured in the same run so numbers are always
compared like for like. Three sections:

``ua``
    The evaluation-run model trained on ua.base, tested on ua.test. Kinds
    that choose settings themselves choose them on a validation split carved
    from ua.base; the choices are printed per seed and kept in each run's
    ``settings`` (what each choice compared, in its ``selection``).
``temporal``
    Each user's newest 10 ratings are the outer test; the rest (the outer
    train) is what a trainer job is given. The job holds out each user's
    newest 10 of those, trains, and publishes either that model ("no refit")
    or the same settings refit on all of the outer train ("refit", the
    trainer's default). Both are scored on the outer test against EASE^R
    with lambda chosen on a by-time validation split and fit on the outer train.
``sessions``
    The refit models answer every outer-test user as a visitor they do not
    know, from only that user's last 10 outer-train movies, through the
    kind's own ``QueryEncoder`` (what the recommender does for a session);
    EASE^R is asked with the same 10 movies as a 0/1 row.

Target lines (ratio of mean Recall@10, PASS/FAIL) close the output; the
JSON holds every run.

    .venv/bin/python -m benchmarks.quality [--movielens-dir DIR] [--seeds 0,1,2] [--kinds ...]
        [--sections ua,temporal,sessions] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from movierec.v1.vocabulary import MODEL_KINDS
from movierec_common.session_query import QueryEncoder, history_encoder
from trainer_service.data import load_movielens_100k
from trainer_service.evaluation import (
    evaluate_score_rows,
    evaluate_scores,
    popularity_vectors,
)
from trainer_service.ratings import Ratings, Split, time_ordered_history
from trainer_service.splits import carve_validation, holdout_mask, make_split
from trainer_service.training import resolve_hyperparameters

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "quality.json"
METRICS = ("recall_at_10", "ndcg_at_10", "recall_at_50")
SECTIONS = ("ua", "temporal", "sessions")
TINY_USERS = 150
TINY_OVERRIDES = {"epochs": 1, "batch_size": 4096, "patience": 1}
# The outer holdout and the job's own holdout: each user's newest 10 ratings.
HOLDOUT_SIZE = 10
SESSION_LENGTH = 10
# The EASE^R reference chooses lambda like a careful user would: on each
# user's newest 5 outer-train ratings, from a grid around the usual optimum.
EASE_LAMBDAS = (50.0, 100.0, 200.0, 300.0, 500.0, 1000.0)
REFERENCE_VALIDATION_SIZE = 5
TARGET_RATIO = 1.15
REFERENCE = "ease (reference)"
POPULARITY = "popularity"


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


def _metric_summary(metrics: list[dict]) -> dict[str, dict[str, float]]:
    return {name: _summary([m[name] for m in metrics]) for name in METRICS}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _numeric(settings: dict) -> dict:
    """The scalar settings, for one readable progress line."""
    return {k: v for k, v in settings.items() if isinstance(v, (int, float))}


def hyperparameters(kind: str, tiny: bool):
    return resolve_hyperparameters(kind, TINY_OVERRIDES if tiny else {})


# --------------------------------------------------------------------------- ua.base -> ua.test


def ua_section(data: Ratings, kinds, seeds, tiny: bool, train_model) -> dict:
    """The evaluation run's own model on the GroupLens split, comparable with published numbers."""
    split = make_split(data, "ua", 0, seed=0)
    if tiny:
        split = subset_users(split, TINY_USERS)
    train_csr, test_csr = split.train_csr(), split.test_csr()
    pop = evaluate_scores(*popularity_vectors(train_csr, split.data.n_items), train_csr, test_csr)
    rows = [{"kind": POPULARITY, "seeds": [], "runs": [{"seed": None, "metrics": pop, "train_seconds": 0.0,
                                                         "final_loss": None}]}]
    for kind in kinds:
        hparams = hyperparameters(kind, tiny)
        runs = []
        for seed in seeds:
            model = train_model(kind, split, hparams, seed=seed)
            metrics = evaluate_scores(model.user_vectors, model.item_vectors, train_csr, test_csr)
            runs.append({
                "seed": seed, "metrics": metrics, "train_seconds": model.train_seconds,
                "final_loss": model.loss_history[-1] if model.loss_history else None,
                "epochs_run": model.epochs_run, "best_epoch": model.best_epoch,
                "validation_metrics": model.validation_metrics, "settings": model.settings.to_json(),
                "selection": model.selection,
            })
            chosen = _numeric(model.settings.to_json())
            _log(f"  ua {kind} seed {seed}: recall@10 {metrics['recall_at_10']:.4f} "
                 f"ndcg@10 {metrics['ndcg_at_10']:.4f} in {model.train_seconds:.1f}s"
                 + (f" (chosen on validation: {chosen})" if chosen else ""))
        rows.append({"kind": kind, "seeds": list(seeds), "hyperparameters": asdict(hparams), "runs": runs})
    for row in rows:
        row["summary"] = _metric_summary([r["metrics"] for r in row["runs"]])
        row["summary"]["train_seconds"] = _summary([r["train_seconds"] for r in row["runs"]])
        losses = [r["final_loss"] for r in row["runs"] if r["final_loss"] is not None]
        row["summary"]["final_loss"] = _summary(losses) if losses else None
    return {"split": split.name, "rows": rows}


# --------------------------------------------------------------------------- splits of the temporal sections


def outer_split(data: Ratings, tiny: bool) -> Split:
    split = make_split(data, "last_n_per_user", HOLDOUT_SIZE, seed=0)
    return subset_users(split, TINY_USERS) if tiny else split


def job_split(outer: Split) -> Split:
    """What a trainer job with a ``last_n_per_user`` 10 holdout makes of the outer train.

    Built over the same ``Ratings`` so every index means the same user and
    movie in both splits, and with make_split's rule (ties in time broken by
    file position), so the job holds out exactly what it would if the outer
    train were its whole dataset.
    """
    data, train = outer.data, outer.train
    mask = holdout_mask(data.users[train], data.timestamps[train], "last_n_per_user", HOLDOUT_SIZE, seed=0)
    return Split(data=data, train=train[~mask], test=train[mask],
                 name=f"job split (outer train, its newest {HOLDOUT_SIZE} per user held out)")


def last_sessions(outer: Split, length: int = SESSION_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """CSR of each user's newest ``length`` outer-train movies, oldest first: the anonymous sessions."""
    indptr, items, _ = time_ordered_history(outer.data, outer.train)
    counts = np.minimum(np.diff(indptr), length)
    starts = indptr[1:] - counts
    session_indptr = np.zeros_like(indptr)
    np.cumsum(counts, out=session_indptr[1:])
    offsets = np.arange(session_indptr[-1]) - np.repeat(session_indptr[:-1], counts)
    return session_indptr, items[np.repeat(starts, counts) + offsets]


# --------------------------------------------------------------------------- the EASE^R reference


@dataclass
class Reference:
    """EASE^R fit on the outer train, with the lambda its by-time validation chose."""

    seed: int
    l2_lambda: float
    candidates: list[dict]
    history: np.ndarray
    item_vectors: np.ndarray

    def record(self) -> dict:
        return {"seed": self.seed, "l2_lambda": self.l2_lambda, "candidates": self.candidates}


def choose_ease_lambda(validation: Split) -> tuple[float, list[dict]]:
    """The grid lambda with the best validation Recall@10 (NDCG@10 breaks ties), and every candidate's metrics."""
    from trainer_service import history_matrix, models  # imports TensorFlow; --help stays fast

    held_in = history_matrix.binary_history(validation.train_csr(), validation.data.n_items)
    tried = []
    for l2_lambda in EASE_LAMBDAS:
        weights = models.ease_item_weights(held_in, l2_lambda)
        metrics = evaluate_scores(held_in, weights.T, validation.train_csr(), validation.test_csr())
        tried.append({"l2_lambda": l2_lambda, **{k: metrics[k] for k in METRICS}})
    best = max(tried, key=lambda c: (c["recall_at_10"], c["ndcg_at_10"]))
    return best["l2_lambda"], tried


def ease_reference(outer: Split, seed: int) -> Reference:
    """Chosen on each user's newest outer-train ratings and fit on all of them: the strongest simple baseline."""
    from trainer_service import history_matrix, models

    validation = carve_validation(outer, REFERENCE_VALIDATION_SIZE, seed, by_time=True)
    l2_lambda, tried = choose_ease_lambda(validation)
    history = history_matrix.binary_history(outer.train_csr(), outer.data.n_items)
    weights = models.ease_item_weights(history, l2_lambda)
    return Reference(seed, l2_lambda, tried, history, np.ascontiguousarray(weights.T))


# --------------------------------------------------------------------------- sessions


def session_users(sessions, test_csr) -> np.ndarray:
    """Users with something to find (outer-test movies) and something to ask with (a session)."""
    return np.flatnonzero((np.diff(test_csr[0]) > 0) & (np.diff(sessions[0]) > 0))


def session_queries(encoder: QueryEncoder, item_vectors: np.ndarray, sessions, users: np.ndarray) -> np.ndarray:
    """[users, width] queries, each built by the served encoder from nothing but the session."""
    indptr, items = sessions
    return np.stack([encoder.encode(items[indptr[u]:indptr[u + 1]], item_vectors) for u in users.tolist()])


def session_metrics(encoder: QueryEncoder, item_vectors: np.ndarray, sessions, test_csr) -> dict[str, float]:
    """Recall/NDCG of anonymous sessions; only the session's movies are excluded (all the server knows)."""
    users = session_users(sessions, test_csr)
    scores = session_queries(encoder, item_vectors, sessions, users) @ np.asarray(item_vectors, np.float32).T
    return evaluate_score_rows(scores, users, sessions, test_csr)


def popularity_session_metrics(outer: Split, sessions) -> dict[str, float]:
    _, counts = popularity_vectors(outer.train_csr(), outer.data.n_items)
    users = session_users(sessions, outer.test_csr())
    scores = np.repeat(counts.T, users.size, axis=0)
    return evaluate_score_rows(scores, users, sessions, outer.test_csr())


# --------------------------------------------------------------------------- temporal + sessions


def served_models(kind: str, outer: Split, inner: Split, hparams, seed: int, train_model):
    """(what the job evaluated, what it publishes after the refit), as the trainer's pipeline does it."""
    evaluated = train_model(kind, inner, hparams, seed=seed)
    refit = train_model(kind, outer, hparams, seed=seed, refit_settings=evaluated.settings)
    return evaluated, refit


def _outer_metrics(model_vectors, outer: Split) -> dict[str, float]:
    """Scores on the outer test, every outer-train movie excluded (the server knows the user's history)."""
    return evaluate_scores(*model_vectors, outer.train_csr(), outer.test_csr())


def reference_rows(outer: Split, inner: Split, seeds, sessions) -> tuple[dict, dict, dict, dict]:
    """(temporal reference row, temporal popularity row, session reference row, session popularity row)."""
    temporal, session = [], []
    for seed in seeds:
        reference = ease_reference(outer, seed)
        metrics = _outer_metrics((reference.history, reference.item_vectors), outer)
        temporal.append({**reference.record(), "no_refit": metrics, "refit": metrics})
        found = session_metrics(history_encoder(outer.data.n_items), reference.item_vectors, sessions,
                                outer.test_csr())
        session.append({"seed": seed, "l2_lambda": reference.l2_lambda, "metrics": found})
        _log(f"  {REFERENCE} seed {seed}: lambda {reference.l2_lambda:g} (by-time validation), "
             f"outer recall@10 {metrics['recall_at_10']:.4f}, session recall@10 {found['recall_at_10']:.4f}")
    pop_inner = popularity_vectors(inner.train_csr(), outer.data.n_items)
    pop_outer = popularity_vectors(outer.train_csr(), outer.data.n_items)
    pop_temporal = {"seed": None, "no_refit": _outer_metrics(pop_inner, outer),
                    "refit": _outer_metrics(pop_outer, outer)}
    pop_session = {"seed": None, "metrics": popularity_session_metrics(outer, sessions)}
    return ({"kind": REFERENCE, "seeds": list(seeds), "runs": temporal},
            {"kind": POPULARITY, "seeds": [], "runs": [pop_temporal]},
            {"kind": REFERENCE, "seeds": list(seeds), "runs": session},
            {"kind": POPULARITY, "seeds": [], "runs": [pop_session]})


def temporal_run(kind: str, seed: int, evaluated, refit, outer: Split) -> dict:
    no_refit_metrics = _outer_metrics((evaluated.user_vectors, evaluated.item_vectors), outer)
    refit_metrics = _outer_metrics((refit.user_vectors, refit.item_vectors), outer)
    _log(f"  temporal {kind} seed {seed}: recall@10 no refit {no_refit_metrics['recall_at_10']:.4f}, "
         f"refit {refit_metrics['recall_at_10']:.4f}; settings {_numeric(evaluated.settings.to_json())} "
         f"chosen on {evaluated.validation_split!r}")
    return {
        "seed": seed, "settings": evaluated.settings.to_json(), "settings_chosen_on": evaluated.validation_split,
        "validation_metrics": evaluated.validation_metrics, "epochs_run": evaluated.epochs_run,
        "no_refit": no_refit_metrics, "refit": refit_metrics,
        "train_seconds": evaluated.train_seconds, "refit_seconds": refit.train_seconds,
    }


def session_run(kind: str, seed: int, refit, outer: Split, sessions) -> dict:
    metrics = session_metrics(refit.encoder, refit.item_vectors, sessions, outer.test_csr())
    _log(f"  sessions {kind} seed {seed}: recall@10 {metrics['recall_at_10']:.4f} "
         f"ndcg@10 {metrics['ndcg_at_10']:.4f}")
    return {"seed": seed, "metrics": metrics, "query_encoder": refit.encoder.to_json()}


def _summarise_temporal(rows: list[dict]) -> None:
    reference = rows[0]
    for row in rows:
        row["summary"] = {served: _metric_summary([r[served] for r in row["runs"]]) for served in ("no_refit", "refit")}
    base = reference["summary"]["refit"]["recall_at_10"]["mean"]
    for row in rows:
        row["ratio_to_reference"] = {served: _ratio(row["summary"][served]["recall_at_10"]["mean"], base)
                                     for served in ("no_refit", "refit")}


def _summarise_sessions(rows: list[dict]) -> None:
    for row in rows:
        row["summary"] = _metric_summary([r["metrics"] for r in row["runs"]])
    base = rows[0]["summary"]["recall_at_10"]["mean"]
    for row in rows:
        row["ratio_to_reference"] = _ratio(row["summary"]["recall_at_10"]["mean"], base)


def temporal_sections(data: Ratings, kinds, seeds, tiny: bool, sections, train_model) -> dict:
    """Both sections on the last-10 holdout; sessions reuse the temporal section's refit models."""
    outer = outer_split(data, tiny)
    inner = job_split(outer)
    sessions = last_sessions(outer)
    temporal_ref, temporal_pop, session_ref, session_pop = reference_rows(outer, inner, seeds, sessions)
    temporal_rows, session_rows = [temporal_ref, temporal_pop], [session_ref, session_pop]
    for kind in kinds:
        hparams = hyperparameters(kind, tiny)
        temporal_runs, session_runs = [], []
        for seed in seeds:
            evaluated, refit = served_models(kind, outer, inner, hparams, seed, train_model)
            temporal_runs.append(temporal_run(kind, seed, evaluated, refit, outer))
            session_runs.append(session_run(kind, seed, refit, outer, sessions))
        temporal_rows.append({"kind": kind, "seeds": list(seeds), "hyperparameters": asdict(hparams),
                              "runs": temporal_runs})
        session_rows.append({"kind": kind, "seeds": list(seeds), "runs": session_runs})
    _summarise_temporal(temporal_rows)
    _summarise_sessions(session_rows)
    found = {}
    if "temporal" in sections:
        found["temporal"] = {"split": outer.name, "job_split": inner.name, "rows": temporal_rows}
    if "sessions" in sections:
        found["sessions"] = {"split": outer.name, "session": f"each user's newest {SESSION_LENGTH} outer-train movies, "
                             "oldest first; only they are excluded", "rows": session_rows}
    return found


# --------------------------------------------------------------------------- targets


def _model_rows(section: dict) -> list[dict]:
    return [row for row in section["rows"] if row["kind"] not in (REFERENCE, POPULARITY)]


def _reference_recall(section: dict, served: str | None) -> float:
    summary = section["rows"][0]["summary"]
    return (summary[served] if served else summary)["recall_at_10"]["mean"]


def _target(name: str, kind: str, measured: float, baseline: float, threshold: float) -> dict:
    ratio = _ratio(measured, baseline)
    return {"target": name, "kind": kind, "recall_at_10": measured, "baseline_recall_at_10": baseline,
            "ratio": ratio, "threshold": threshold, "passed": bool(ratio >= threshold)}


def targets(result: dict) -> list[dict]:
    """The issue's targets, for the sections and kinds this run measured."""
    found = []
    temporal, sessions = result.get("temporal"), result.get("sessions")
    if temporal and _model_rows(temporal):
        best = max(_model_rows(temporal), key=lambda row: row["summary"]["refit"]["recall_at_10"]["mean"])
        found.append(_target(f"best served kind (refit) ≥ {TARGET_RATIO}× the EASE reference (temporal)",
                             best["kind"], best["summary"]["refit"]["recall_at_10"]["mean"],
                             _reference_recall(temporal, "refit"), TARGET_RATIO))
        two_tower = next((row for row in temporal["rows"] if row["kind"] == "two_tower"), None)
        if two_tower:
            found.append(_target("two_tower refit ≥ two_tower no-refit", "two_tower",
                                 two_tower["summary"]["refit"]["recall_at_10"]["mean"],
                                 two_tower["summary"]["no_refit"]["recall_at_10"]["mean"], 1.0))
    if sessions and _model_rows(sessions):
        best = max(_model_rows(sessions), key=lambda row: row["summary"]["recall_at_10"]["mean"])
        found.append(_target(f"best session kind ≥ {TARGET_RATIO}× EASE queried with the same "
                             f"{SESSION_LENGTH} movies", best["kind"], best["summary"]["recall_at_10"]["mean"],
                             _reference_recall(sessions, None), TARGET_RATIO))
    return found


# --------------------------------------------------------------------------- running


def run(movielens_dir: str | None, kinds, seeds, tiny: bool, sections=SECTIONS) -> dict:
    # Imports TensorFlow, so only here: --help stays fast.
    from trainer_service.training import train_model

    data, used = load_movielens_100k(movielens_dir)
    started = time.monotonic()
    result = {
        "protocol": "implicit; all test ratings relevant; excluded: the user's training movies (ua, temporal) "
                    "or the session's movies (sessions); all other items ranked; mean over users with test "
                    "items; NDCG binary gains; ratios are of mean Recall@10",
        "data_source": data.source, "data_fingerprint": data.fingerprint, "data_path": used,
        "tiny": tiny, "seeds": list(seeds), "kinds": list(kinds), "sections": list(sections),
    }
    if "ua" in sections:
        result["ua"] = ua_section(data, kinds, seeds, tiny, train_model)
    if "temporal" in sections or "sessions" in sections:
        result.update(temporal_sections(data, kinds, seeds, tiny, sections, train_model))
    result["targets"] = targets(result)
    result.update(wall_seconds=time.monotonic() - started, python=platform.python_version(),
                  machine=platform.machine())
    return result


# --------------------------------------------------------------------------- tables


def _cell(summary: dict) -> str:
    return f"{summary['mean']:.4f} ± {summary['std']:.4f}"


def _metric_cells(summary: dict) -> str:
    return " ".join(f"{_cell(summary[name]):>17}" for name in METRICS)


_METRIC_HEADER = f"{'Recall@10':>17} {'NDCG@10':>17} {'Recall@50':>17}"


def format_ua(result: dict) -> str:
    section = result["ua"]
    header = f"{'kind':<18} {_METRIC_HEADER} {'train s':>13} {'final loss':>10}  seeds"
    lines = [f"ua: {section['split']} — {result['data_source']}", header, "-" * len(header)]
    for row in section["rows"]:
        s = row["summary"]
        loss = f"{s['final_loss']['mean']:.4f}" if s["final_loss"] else "-"
        seconds = f"{s['train_seconds']['mean']:.1f} ± {s['train_seconds']['std']:.1f}"
        seeds = ",".join(str(x) for x in row["seeds"]) or "-"
        lines.append(f"{row['kind']:<18} {_metric_cells(s)} {seconds:>13} {loss:>10}  {seeds}")
    return "\n".join(lines)


def _kind_label(row: dict) -> str:
    if row["kind"] == REFERENCE:
        lambdas = sorted({r["l2_lambda"] for r in row["runs"]})
        return f"ease λ={'/'.join(f'{x:g}' for x in lambdas)} (ref)"
    return row["kind"]


def format_temporal(result: dict) -> str:
    section = result["temporal"]
    header = f"{'kind':<22} {'served':<8} {_METRIC_HEADER} {'×EASE R@10':>10}  seeds"
    title = (f"temporal: outer split {section['split']}; a job trains on the {section['job_split']}, "
             "then publishes that model (no refit) or refits it on the whole outer train (refit)")
    lines = [title, header, "-" * len(header)]
    for row in section["rows"]:
        seeds = ",".join(str(x) for x in row["seeds"]) or "-"
        for served in (("refit",) if row["kind"] == REFERENCE else ("no_refit", "refit")):
            label = "-" if row["kind"] == REFERENCE else served.replace("_", " ")
            lines.append(f"{_kind_label(row):<22} {label:<8} {_metric_cells(row['summary'][served])} "
                         f"{row['ratio_to_reference'][served]:>9.3f}×  {seeds}")
    return "\n".join(lines)


def format_sessions(result: dict) -> str:
    section = result["sessions"]
    header = f"{'kind':<22} {_METRIC_HEADER} {'×EASE R@10':>10}  seeds"
    title = (f"sessions: refit models queried as unknown visitors with {section['session']}; "
             f"tested on {section['split']}")
    lines = [title, header, "-" * len(header)]
    for row in section["rows"]:
        seeds = ",".join(str(x) for x in row["seeds"]) or "-"
        lines.append(f"{_kind_label(row):<22} {_metric_cells(row['summary'])} "
                     f"{row['ratio_to_reference']:>9.3f}×  {seeds}")
    return "\n".join(lines)


def format_targets(result: dict) -> str:
    return "\n".join(
        f"target: {t['target']}: {t['kind']} {t['recall_at_10']:.4f} / {t['baseline_recall_at_10']:.4f} "
        f"= {t['ratio']:.3f}× (need ≥ {t['threshold']:g}×) {'PASS' if t['passed'] else 'FAIL'}"
        for t in result["targets"])


def format_report(result: dict) -> str:
    formatters = {"ua": format_ua, "temporal": format_temporal, "sessions": format_sessions}
    parts = [formatters[name](result) for name in SECTIONS if name in result]
    if result["targets"]:
        parts.append(format_targets(result))
    return "\n\n".join(parts)


def _names(text: str, allowed, what: str, parser) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in allowed]
    if unknown:
        parser.error(f"unknown {what} {unknown}; expected {', '.join(allowed)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens-dir", default=None, help="GroupLens ml-100k folder or zip (else MOVIELENS_DIR)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the JSON results")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--kinds", default=",".join(MODEL_KINDS), help="comma-separated model kinds")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {', '.join(SECTIONS)}")
    parser.add_argument("--tiny", action="store_true",
                        help=f"smoke budget: 1 epoch, 1 seed, first {TINY_USERS} users (keeps the script tested)")
    args = parser.parse_args(argv)
    kinds = _names(args.kinds, MODEL_KINDS, "kinds", parser)
    sections = [name for name in SECTIONS if name in _names(args.sections, SECTIONS, "sections", parser)]
    if not sections:
        parser.error("choose at least one section")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.tiny:
        seeds = seeds[:1]
    result = run(args.movielens_dir, kinds, seeds, args.tiny, sections)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(format_report(result))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
