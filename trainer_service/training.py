"""The model kinds, registered once, and the training entry point the trainer and the benchmarks share.

``KINDS`` is the registry: every kind a ``TrainRequest`` may name, each a
:class:`~trainer_service.model_kind.ModelKind` that knows its defaults,
whether it is closed form, how it validates, its catalogue bound, and how it
fits and refits. Its names are ``movierec.v1.vocabulary.MODEL_KINDS``, in
that order (a test holds the two equal), and :func:`kind_named` is the one
place an unknown kind is refused.

:func:`train` trains a :class:`~trainer_service.model_kind.TrainingRun` in
this process (or, given a strategy, as one worker of a Ray run; see
``distributed``); :func:`train_model` is the same with the run spelled out
as arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from trainer_service.closed_form_kinds import Dlae, Ease, EaseBlend, Sequential
from trainer_service.errors import CatalogueTooLarge, UnknownModelKind
from trainer_service.hyperparams import Hyperparameters
from trainer_service.kind_settings import KindSettings
from trainer_service.model_kind import EpochReport, ModelKind, TrainedModel, TrainingRun
from trainer_service.neural_kinds import Bpr, TwoTower, TwoTowerDropout
from trainer_service.ratings import Split

__all__ = ["KINDS", "check_catalogue", "kind_named", "resolve_hyperparameters", "train", "train_model"]


def _register(*kinds: ModelKind[Any]) -> dict[str, ModelKind[Any]]:
    registry: dict[str, ModelKind[Any]] = {}
    for kind in kinds:
        if kind.name in registry:
            raise ValueError(f"model kind {kind.name!r} is registered twice")
        registry[kind.name] = kind
    return registry


KINDS: Mapping[str, ModelKind[Any]] = _register(
    TwoTower(), TwoTowerDropout(), Bpr(), Ease(), Dlae(), EaseBlend(), Sequential())


def kind_named(name: str) -> ModelKind[Any]:
    """The registered kind called ``name``; ``UnknownModelKind`` (an ``InvalidRequest``) lists the others."""
    kind = KINDS.get(name)
    if kind is None:
        raise UnknownModelKind(f"unknown model kind {name!r}; choose one of: {', '.join(KINDS)}")
    return kind


def resolve_hyperparameters(kind: str, overrides: Mapping[str, float | int] | None = None) -> Hyperparameters:
    """Defaults of ``kind`` with the caller's overrides applied and validated (``InvalidRequest`` names the field);
    ``UnknownModelKind`` for a kind the trainer does not have."""
    return kind_named(kind).hyperparameters(overrides)


def check_catalogue(kind: ModelKind[Any], n_items: int) -> None:
    """Raises ``CatalogueTooLarge``, naming the kinds that fit, when ``kind`` cannot train on ``n_items`` movies.

    Asked three times in a job's life, each as early as the size is known: at
    the Train call for a named release, before a job parses your files' ratings
    (their movies counted first), and before training.
    """
    if kind.holds(n_items):
        return
    fitting = [other.name for other in KINDS.values() if other.holds(n_items)]
    raise CatalogueTooLarge(f"{kind.name} {kind.bound_reason} and supports at most {kind.max_items:,} movies; "
                            f"this dataset has {n_items:,}. Kinds that fit this catalogue: {', '.join(fitting)}")


def train(run: TrainingRun) -> TrainedModel:
    """Trains ``run`` with its kind; ``CatalogueTooLarge`` before anything starts when the kind cannot hold
    the catalogue, ``Cancelled`` when ``run.should_stop`` asked for it."""
    kind = kind_named(run.kind)
    check_catalogue(kind, run.split.data.n_items)
    return kind.train(run)


def train_model(kind: str, split: Split, hparams: Hyperparameters, seed: int,
                on_epoch: Callable[[EpochReport], None] | None = None,
                should_stop: Callable[[], bool] | None = None,
                strategy: Any = None,
                refit_settings: KindSettings | Mapping[str, Any] | None = None) -> TrainedModel:
    """Train ``kind`` on ``split``'s training ratings and export user/item vectors.

    Settings (epochs, lambda, dropout, weights) are chosen on a validation
    split carved from the training ratings and returned in ``settings``.
    Given ``refit_settings`` (a previous run's ``settings``) nothing is
    chosen: the model is trained on all of ``split``'s training ratings with
    them, which is how a job publishes a model that has seen its holdout.

    With a multi-worker ``strategy`` (neural kinds only) this is one worker's
    part of a data-parallel run; only the chief's result holds vectors.
    """
    return train(TrainingRun(kind=kind, split=split, hyperparameters=hparams, seed=seed, on_epoch=on_epoch,
                             should_stop=should_stop, strategy=strategy, refit_settings=refit_settings))
