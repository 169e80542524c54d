"""Long-tail quality: does the two-tower find a user's taste when global popularity is no answer?

On a clustered long-tail catalogue (``movierec-synth`` with
``--clusters-per-user 2 --popularity-within-clusters``: equal-size clusters,
Zipf popularity inside each, every user's taste split over two clusters) the
right answer is "the popular movies of *your* clusters", and global
popularity is nearly useless. A model that lets vector length (learned
popularity) outvote the user's direction collapses to the global hits. This
script measures that, in one process and on one split:

* hit@10 of the user's last rating held out (recall@10 with one held-out
  movie, ``trainer_service.evaluation``), for each ``two_tower`` variant asked
  for, global popularity, and the **cluster oracle** (the most-rated training
  movies of the user's true clusters, seen ones excluded);
* the diagnostics of issue 20: the median training popularity of the movies a
  model recommends and the share from the less-rated half of the catalogue,
  distinct movies in 200 users' top 10s, and the median vector length of the
  1% most-rated movies against all movies' median.

Variants train one after another on the same data (``--variant
name:key=value,...``; the keys are ``Hyperparameters`` fields, set as given,
0 included), so old and new are compared side by side. Shapes: ``full``
(1,000 clusters x 1,000 movies, 100,000 users, 2.45M ratings), ``screen``
(200 x 1,000, 20,000 users, 490k ratings) and ``--tiny`` (seconds).

``python benchmarks/long_tail.py --shape screen --variant old:uniform_negatives=0`` prints a table and writes
JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repo importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.report import target_lines  # noqa: E402

SHAPES: dict[str, dict[str, int]] = {
    "full": {"users": 100_000, "movies": 1_000_000, "ratings": 2_450_000, "clusters": 1_000, "clusters_per_user": 2},
    "screen": {"users": 20_000, "movies": 200_000, "ratings": 490_000, "clusters": 200, "clusters_per_user": 2},
    # scale.py part (a)'s default movierec-synth shape (a Dirichlet mixture over 24 clusters), a fifth of its
    # size: the check that a fix for the long tail does not cost the default shape (no cluster oracle there).
    "mixture": {"users": 10_000, "movies": 200_000, "ratings": 400_000, "clusters": 24, "clusters_per_user": 0},
    # scale.py part (b)'s shape (ML-25M's catalogue, its ratings per user), a tenth of its users and ratings.
    "ml25m_tenth": {"users": 16_254, "movies": 62_423, "ratings": 2_500_000, "clusters": 24, "clusters_per_user": 0},
    # The smallest catalogue that takes the sampled-softmax path.
    "tiny": {"users": 1_000, "movies": 20_000, "ratings": 16_000, "clusters": 20, "clusters_per_user": 2},
}
# Scores per scorer: a seeded sample of users stands for all (2,000 users at a million movies).
MAX_SCORES = 2_000_000_000
DIAGNOSTIC_USERS = 200
TARGET_OVER_ORACLE = 0.5
TARGET_OVER_POPULARITY = 10.0
FULL_EPOCHS = 10
PATIENCE = 2
# two_tower's sampled-softmax settings before issue 20, for the comparison row.
BEFORE_ISSUE_20: dict[str, float] = {"sampled_temperature": 0, "uniform_negatives": 0, "logq_strength": 1.0,
                                     "l2_normalize": 0, "temperature": 1.0}


@dataclass(frozen=True)
class LongTailData:
    """The generated ratings, split, and what only the generator knows: each user's true clusters."""

    split: Any                  # trainer_service.ratings.Split, last rating per user held out
    movie_cluster: np.ndarray   # cluster of each movie index
    user_clusters: np.ndarray | None  # [users, clusters per user]; None for the default mixture shape
    shape: dict[str, int]

    def oracle_scores(self, users: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """[len(users), movies]: movies of each user's own clusters by training count ``counts``, above all others."""
        assert self.user_clusters is not None, "the mixture shape has no true clusters per user"
        by_cluster = np.argsort(self.movie_cluster, kind="stable")
        starts = np.searchsorted(self.movie_cluster[by_cluster], np.arange(int(self.movie_cluster.max()) + 2))
        scores = np.zeros((len(users), len(self.movie_cluster)), dtype=np.float32)
        for row, clusters in enumerate(self.user_clusters[users]):
            for cluster in clusters:
                members = by_cluster[starts[cluster]:starts[cluster + 1]]
                scores[row, members] = 1.0 + counts[members]
        return scores


def clustered_data(shape: dict[str, int], seed: int) -> LongTailData:
    """Generates the shape's set in memory (0 clusters per user: the default mixture) and holds out each user's
    last rating."""
    from trainer_service import synth
    from trainer_service.ratings import Ratings
    from trainer_service.splits import make_split

    data = synth.synthesize(shape["users"], shape["movies"], shape["ratings"], seed=seed, clusters=shape["clusters"],
                            clusters_per_user=shape["clusters_per_user"],
                            popularity_within_clusters=shape["clusters_per_user"] > 0)
    movies = len(data.catalogue)
    ratings = Ratings(
        user_ids=np.array([str(u) for u in range(1, shape["users"] + 1)]), movie_ids=data.catalogue,
        titles=np.array([""] * movies), users=data.user_ids - 1,
        items=np.searchsorted(data.catalogue, data.movie_ids).astype(np.int32), ratings=data.ratings,
        timestamps=data.timestamps, source="synthetic clustered long tail", fingerprint=f"long-tail-{seed}")
    return LongTailData(make_split(ratings, "last_n_per_user", 1, seed), data.movie_cluster, data.user_clusters,
                        shape)


def _hit_at_10(metrics: dict[str, float]) -> dict[str, float]:
    return {"hit_at_10": round(metrics["recall_at_10"], 4), "ndcg_at_10": round(metrics["ndcg_at_10"], 4),
            "users_evaluated": int(metrics["users_evaluated"])}


def baselines(data: LongTailData, max_scores: int) -> dict[str, dict[str, float]]:
    """Global popularity and the cluster oracle, on the same users the models are evaluated on, and the
    job's neighbourhood-popularity baseline (``trainer_service.neighbourhood_baseline``), on its own sample."""
    from trainer_service.evaluation import evaluate_ranking, evaluate_scores, popularity_vectors
    from trainer_service.neighbourhood_baseline import evaluate_neighbourhood_popularity

    split = data.split
    n_items = split.data.n_items
    train_csr, test_csr = split.train_csr(), split.test_csr()
    popular = evaluate_scores(*popularity_vectors(train_csr, n_items), train_csr, test_csr, ks=(10,),
                              max_scores=max_scores)
    neighbourhood = evaluate_neighbourhood_popularity(train_csr, test_csr, n_items, ks=(10,))
    found = {"global_popularity": _hit_at_10(popular),
             "neighbourhood_popularity": {**_hit_at_10(neighbourhood),
                                          "users_evaluated": int(neighbourhood["users_evaluated"])}}
    if data.user_clusters is None:
        return found
    counts = np.bincount(train_csr[1], minlength=n_items).astype(np.float32)
    oracle = evaluate_ranking(lambda users: data.oracle_scores(users, counts), n_items, train_csr, test_csr,
                              ks=(10,), max_scores=max_scores)
    return {**found, "cluster_oracle": _hit_at_10(oracle)}


def diagnostics(user_vectors: np.ndarray, item_vectors: np.ndarray, train_csr, seed: int) -> dict[str, float]:
    """What a model recommends (issue 20's symptoms): popularity of its picks, their variety, the norm gap."""
    indptr, seen = train_csr
    counts = np.bincount(seen, minlength=item_vectors.shape[0])
    users = np.random.default_rng(seed).choice(len(indptr) - 1, size=min(DIAGNOSTIC_USERS, len(indptr) - 1),
                                               replace=False)
    scores = user_vectors[users] @ item_vectors.T
    for row, user in enumerate(users):
        scores[row, seen[indptr[user]:indptr[user + 1]]] = -np.inf
    top = np.argpartition(-scores, 9, axis=1)[:, :10]
    picked = counts[top].ravel()
    median_count = float(np.median(counts))
    norms = np.linalg.norm(item_vectors, axis=1)
    head = np.argsort(-counts, kind="stable")[:max(1, len(counts) // 100)]
    return {
        "median_popularity_of_picks": float(np.median(picked)),
        "catalogue_max_popularity": int(counts.max()),
        "share_of_picks_from_less_rated_half": round(float(np.mean(picked <= median_count)), 4),
        "distinct_in_top10s": int(len(np.unique(top))),
        "diagnostic_users": int(len(users)),
        "norm_top1pct_median": round(float(np.median(norms[head])), 3),
        "norm_median": round(float(np.median(norms)), 3),
    }


def parse_variant(text: str) -> tuple[str, dict[str, float]]:
    """``name:key=value,key=value`` (or just ``name``) into a name and overrides."""
    name, _, settings = text.partition(":")
    overrides: dict[str, float] = {}
    for pair in filter(None, settings.split(",")):
        key, _, value = pair.partition("=")
        overrides[key.strip()] = float(value)
    return name, overrides


def hyperparameters(base: dict[str, float], overrides: dict[str, float]) -> Any:
    """``two_tower``'s defaults with ``base`` then ``overrides`` set exactly (0 means 0 here, unlike a request)."""
    from trainer_service.training import resolve_hyperparameters

    hp = resolve_hyperparameters("two_tower", {})
    types = {f.name: f.type for f in dataclasses.fields(hp)}
    changes = {**base, **overrides}
    unknown = set(changes) - set(types)
    if unknown:
        raise ValueError(f"unknown hyperparameters {sorted(unknown)}")
    return dataclasses.replace(hp, **{k: int(v) if types[k] in ("int", int) else float(v) for k, v in changes.items()})


def train_variant(data: LongTailData, name: str, hp: Any, seed: int, max_scores: int,
                  save_vectors: str | None = None) -> dict[str, Any]:
    """Trains one ``two_tower`` variant through ``train_model`` and measures it."""
    from movierec_common.tfenv import tensorflow
    from trainer_service import popularity_prior
    from trainer_service.evaluation import evaluate_scores
    from trainer_service.training import train_model

    tensorflow().keras.backend.clear_session()
    epochs: list[dict[str, float]] = []

    def on_epoch(report) -> None:
        epochs.append({"epoch": report.epoch, "seconds": round(report.elapsed_seconds, 1),
                       "loss": round(report.loss, 4),
                       "validation_recall_at_10": round(report.validation.get("recall_at_10", 0.0), 4)})
        print(f"  [{name}] epoch {report.epoch}: {report.elapsed_seconds:.0f} s, loss {report.loss:.3f}, "
              f"validation recall@10 {epochs[-1]['validation_recall_at_10']}", flush=True)

    model = train_model("two_tower", data.split, hp, seed, on_epoch=on_epoch)
    if save_vectors:
        Path(save_vectors).mkdir(parents=True, exist_ok=True)
        np.savez(Path(save_vectors) / f"{name}.npz", users=model.user_vectors, items=model.item_vectors)
    train_csr, test_csr = data.split.train_csr(), data.split.test_csr()
    metrics = evaluate_scores(model.user_vectors, model.item_vectors, train_csr, test_csr, ks=(10,),
                              max_scores=max_scores)
    # The same vectors with the popularity prior divided out again: the prior's own effect, same model.
    gamma = getattr(model.settings, "popularity_prior", 0.0)
    without = metrics
    if gamma:
        counts = popularity_prior.rating_counts(data.split, data.split.train)
        without = evaluate_scores(model.user_vectors, model.item_vectors / ((counts + 1.0) ** gamma)[:, None],
                                  train_csr, test_csr, ks=(10,), max_scores=max_scores)
    changed = {k: v for k, v in hp.as_dict().items() if v != getattr(type(hp)(), k)}
    return {"name": name, "hyperparameters": changed, "softmax": model.selection.get("softmax"),
            # The popularity prior's exponent chosen on validation (trainer_service.popularity_prior), and
            # each choice's validation Recall@10.
            "popularity_prior": getattr(model.settings, "popularity_prior", 0.0),
            "popularity_prior_validation": model.selection.get("popularity_prior", {}),
            "hit_at_10_without_prior": round(float(without["recall_at_10"]), 4),
            "train_seconds": round(model.train_seconds, 1), "epochs_run": model.epochs_run,
            "best_epoch": model.best_epoch, "epochs": epochs, **_hit_at_10(metrics),
            **diagnostics(model.user_vectors, model.item_vectors, train_csr, seed)}


def measure(shape: dict[str, int], variants: Sequence[tuple[str, dict[str, float]]], base: dict[str, float],
            seed: int = 0, max_scores: int = MAX_SCORES, save_vectors: str | None = None) -> dict[str, Any]:
    """The whole measurement: data, baselines, then each variant; a JSON-ready dict."""
    started = time.monotonic()
    data = clustered_data(shape, seed)
    generated = round(time.monotonic() - started, 1)
    print(f"generated {shape['ratings']:,} ratings, {shape['users']:,} users, {shape['movies']:,} movies in "
          f"{shape['clusters']:,} clusters ({generated} s)", flush=True)
    result: dict[str, Any] = {"shape": shape, "seed": seed,
                              "generate_seconds": generated, **baselines(data, max_scores), "variants": []}
    for name, overrides in variants:
        hp = hyperparameters(base, overrides)
        result["variants"].append(train_variant(data, name, hp, seed, max_scores, save_vectors))
        print(format_table(result), flush=True)
    result["targets"] = targets(result)
    return result


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 20's two quality targets, for the last variant (the one proposed)."""
    if not result["variants"] or "cluster_oracle" not in result:
        return []
    name, hit = result["variants"][-1]["name"], result["variants"][-1]["hit_at_10"]
    oracle, popular = result["cluster_oracle"]["hit_at_10"], result["global_popularity"]["hit_at_10"]
    return [
        {"name": f"{name} hit@10 / cluster oracle", "value": round(hit / max(oracle, 1e-9), 3),
         "limit": f">= {TARGET_OVER_ORACLE}", "passed": hit >= TARGET_OVER_ORACLE * oracle},
        {"name": f"{name} hit@10 / global popularity",
         "value": round(hit / max(popular, 1e-9), 1), "limit": f">= {TARGET_OVER_POPULARITY}",
         "passed": hit >= TARGET_OVER_POPULARITY * popular},
    ]


def format_table(result: dict[str, Any]) -> str:
    reference = "cluster_oracle" if "cluster_oracle" in result else "global_popularity"  # the mixture has no oracle
    oracle = result[reference]["hit_at_10"]
    ratio = "x oracle" if reference == "cluster_oracle" else "x pop"
    lines = [f"{'scorer':<22} {'hit@10':>7} {ratio:>8} {'train s':>8} {'epochs':>6} {'med pop':>7} "
             f"{'tail %':>6} {'distinct':>8} {'norm top1%/med':>15}"]
    for label in ("cluster_oracle", "global_popularity", "neighbourhood_popularity"):
        if label not in result:
            continue
        hit = result[label]["hit_at_10"]
        lines.append(f"{label:<22} {hit:>7.4f} {hit / max(oracle, 1e-9):>8.3f}")
    for v in result["variants"]:
        lines.append(f"{v['name']:<22} {v['hit_at_10']:>7.4f} {v['hit_at_10'] / max(oracle, 1e-9):>8.3f} "
                     f"{v['train_seconds']:>8.1f} {v['best_epoch']:>3}/{v['epochs_run']:<2} "
                     f"{v['median_popularity_of_picks']:>7.0f} {100 * v['share_of_picks_from_less_rated_half']:>6.1f} "
                     f"{v['distinct_in_top10s']:>8} {v['norm_top1pct_median']:>7.2f}/{v['norm_median']:<7.2f}")
        if v.get("popularity_prior"):
            off = v["hit_at_10_without_prior"]
            lines.append(f"{'  ' + v['name'] + ', prior off':<22} {off:>7.4f} {off / max(oracle, 1e-9):>8.3f}   "
                         f"(the same vectors without (ratings+1)^{v['popularity_prior']:g})")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), default="full")
    parser.add_argument("--tiny", action="store_true", help="the tiny shape and one epoch: a smoke run of seconds")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                        help="a two_tower variant to train (repeatable; default: today's defaults as 'default')")
    parser.add_argument("--epochs", type=int, default=FULL_EPOCHS,
                        help=f"most epochs per variant (early stopping, patience {PATIENCE})")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-vectors", metavar="DIR", help="keep each variant's vectors as DIR/NAME.npz")
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "long_tail.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.shape, args.epochs = "tiny", 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [parse_variant(v) for v in args.variant] or [("default", {})]
    base = {"epochs": args.epochs, "batch_size": args.batch_size, "patience": PATIENCE}
    report: dict[str, Any] = {
        "benchmark": "long_tail", "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()},
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        **measure(SHAPES[args.shape], variants, base, args.seed, save_vectors=args.save_vectors)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print("\n" + format_table(report))
    for line in target_lines(report["targets"]):
        print(line)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
