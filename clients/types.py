"""Typed results of the movierec clients, and the only proto translation.

Why dataclasses instead of handing out the protobuf messages: proto3 cannot
tell "unset" from zero (``model_version == 0`` means "not published",
an unset ``Timestamp`` reads as 1970), enums are bare ints, and maps are
special containers. Callers should see ``None``, ``"SUCCEEDED"``, aware
``datetime`` objects and plain dicts, and should not need to import generated
code. Every proto <-> Python conversion is in this module (the ``*_from_proto``
functions, ``recommend_request`` and ``train_request``), so the wire format is
handled in one place.
"""

from __future__ import annotations

import datetime as dt
import numbers
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

from google.protobuf import timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message

from movierec.v1 import recommender_pb2, trainer_pb2
from movierec.v1.vocabulary import FINAL_JOB_STATES as TERMINAL_STATES
from movierec.v1.vocabulary import JOB_STATES, SUCCEEDED  # trainer.proto's TrainJob.State names

from .errors import ConfigurationError

__all__ = [
    "Item",
    "GenreCount",
    "Recommendations",
    "UserRecommendations",
    "BatchRecommendations",
    "SimilarItems",
    "ModelVersionInfo",
    "ModelStatus",
    "PublishedVersion",
    "Versions",
    "Pin",
    "Progress",
    "Job",
    "TrainOptions",
    "JOB_STATES",
    "TERMINAL_STATES",
    "HYPERPARAMETERS",
]

# Names accepted in ``TrainerClient.train(hyperparameters=...)``.
HYPERPARAMETERS = tuple(f.name for f in trainer_pb2.Hyperparameters.DESCRIPTOR.fields)


class TrainOptions(TypedDict, total=False):
    """What a training job may set besides its model kind: ``TrainerClient.train(model, **options)``.

    The one definition of these names and types (``train_request`` turns them
    into a TrainRequest). Each is optional: left out or ``None``, the trainer
    decides (the model kind's default, MovieLens 100K, a random holdout, ...).
    """

    epochs: int | None  # at most this many (early stopping may end sooner)
    ratings_path: str | None  # ratings file, relative to the trainer's --data-root; with items_path
    items_path: str | None  # movies file, relative to the trainer's --data-root
    dataset: str | None  # a MovieLens release instead of files, e.g. "movielens/1m-ratings" (DATASET_NAMES)
    hyperparameters: Mapping[str, float | None] | None  # names in HYPERPARAMETERS; None values are left out
    holdout: str | None  # held-out split (movierec.v1.vocabulary.HOLDOUTS)
    holdout_size: int | None  # ratings held out per user
    seed: int | None
    idempotency_key: str | None  # the same key returns the same job
    min_validation_recall_at_10: float | None  # quality gate
    require_no_regression: bool  # quality gate: refuse a model worse than the served one
    quality_gate_disabled: bool  # publish regardless of the trainer's default floor
    workers: int | None  # data-parallel workers (at most the trainer's --workers)
    refit: bool | None  # False: publish the evaluated model itself, not one trained again on all the data


# --------------------------------------------------------------------------- recommender


@dataclass(frozen=True, slots=True)
class Item:
    """A movie in a result list; ``score`` is the model's (unitless) affinity."""

    movie_id: int
    title: str
    score: float
    genres: tuple[str, ...] = ()  # in the catalogue's genre order; () also when the version has no metadata
    year: int | None = None  # release year; None: unknown (or the version has no metadata)


@dataclass(frozen=True, slots=True)
class Recommendations:
    items: list[Item]
    model_version: int
    cold_start: bool  # unknown user (and no known recent movie): the popularity list was returned
    # recent movies the serving model version does not know (ignored), in request order, each once
    unknown_movie_ids: list[int] = field(default_factory=list)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class UserRecommendations:
    user_id: str
    items: list[Item]
    cold_start: bool

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class BatchRecommendations:
    results: list[UserRecommendations]  # in request order
    model_version: int

    def __iter__(self) -> Iterator[UserRecommendations]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def for_user(self, user_id: str | int) -> UserRecommendations:
        """The result for one user (``KeyError`` if it was not asked for)."""
        for result in self.results:
            if result.user_id == str(user_id):
                return result
        raise KeyError(str(user_id))


@dataclass(frozen=True, slots=True)
class SimilarItems:
    movie: Item  # the movie asked about
    items: list[Item]  # most similar first, excluding the movie itself
    model_version: int

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class ModelVersionInfo:
    version: int
    state: str  # one of movierec.v1.vocabulary.VERSION_STATES: "SERVING", "AVAILABLE", "LOADING", ...
    reason: str  # why it was rejected
    model_kind: str
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class GenreCount:
    name: str
    movies: int  # movies of the served version having this genre


@dataclass(frozen=True, slots=True)
class ModelStatus:
    served_version: int | None  # None: no model loaded yet
    model_kind: str
    loaded_at: dt.datetime | None
    versions: list[ModelVersionInfo]  # newest first
    metrics: dict[str, float]  # held-out metrics of the served version
    num_users: int
    num_items: int
    pinned_version: int | None  # None: follows the newest valid version
    model_root: str
    pin_source: str | None = None  # "MODEL_ROOT" (Trainer.PinVersion), "VERSION_FLAG" (the replica's --version)
    pin_problem: str = ""  # why the pinned version is not the served one ("" when it is)
    # The served version's genres and their movie counts, in the source's genre order;
    # [] when it has no movie metadata (published before it existed).
    genres: list[GenreCount] = field(default_factory=list)

    @property
    def serving(self) -> bool:
        return self.served_version is not None


# --------------------------------------------------------------------------- trainer


@dataclass(frozen=True, slots=True)
class Progress:
    phase: str  # "queued", "loading data", "training", "evaluating", "refitting", "publishing", "done"
    epoch: int  # epochs completed
    total_epochs: int
    step: int  # within the current epoch
    steps_per_epoch: int
    loss: float  # mean loss of the last completed epoch
    elapsed_seconds: float
    validation: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    state: str  # one of JOB_STATES
    model: str
    progress: Progress
    loss_history: list[float]
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    evaluation_split: str
    model_version: int | None  # None until published
    published: bool
    not_published_reason: str
    error: str
    created_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    workers: int = 0  # data-parallel workers requested (0: the trainer's --workers); metrics['workers']: what ran

    @property
    def done(self) -> bool:
        """The job has ended (succeeded, failed or was cancelled)."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == SUCCEEDED


@dataclass(frozen=True, slots=True)
class PublishedVersion:
    """A complete version in the model root, as the trainer lists it."""

    version: int
    model_kind: str
    metrics: dict[str, float]  # held-out metrics of the job that published it
    created_at: dt.datetime | None
    size_bytes: int
    pinned: bool
    served_by: list[str]  # replica ids of the recommenders serving it now


@dataclass(frozen=True, slots=True)
class Versions:
    versions: list[PublishedVersion]  # newest first
    pinned_version: int | None  # None: recommenders follow the newest valid version

    def __iter__(self) -> Iterator[PublishedVersion]:
        return iter(self.versions)

    def __len__(self) -> int:
        return len(self.versions)


@dataclass(frozen=True, slots=True)
class Pin:
    pinned_version: int | None  # pinned now; None: recommenders follow the newest valid version
    previous_pinned_version: int | None


# --------------------------------------------------------------------------- translation


def _time(message: Message, name: str) -> dt.datetime | None:
    if not message.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=dt.UTC)


def _metrics(values: Mapping[str, float]) -> dict[str, float]:
    return dict(sorted(values.items()))


def _version(value: int) -> int | None:
    return value or None


def _enum_name(enum: EnumTypeWrapper, value: int) -> str:
    # A newer server may send a state this client does not know yet.
    try:
        return enum.Name(value)
    except ValueError:
        return f"STATE_{value}"


def item_from_proto(item: recommender_pb2.RecommendedItem) -> Item:
    return Item(movie_id=item.movie_id, title=item.title, score=item.score, genres=tuple(item.genres),
                year=item.year or None)


def recommendations_from_proto(response: recommender_pb2.RecommendResponse) -> Recommendations:
    return Recommendations(
        items=[item_from_proto(i) for i in response.items],
        model_version=response.model_version,
        cold_start=response.cold_start,
        unknown_movie_ids=list(response.unknown_movie_ids),
    )


def recommend_request(
    user_id: str | int,
    k: int,
    *,
    exclude_seen: bool | None = None,
    recent: Iterable[int] | None = None,
) -> recommender_pb2.RecommendRequest:
    """Build a RecommendRequest; ``exclude_seen=None`` leaves the server default (true)."""
    try:
        request = recommender_pb2.RecommendRequest(user_id=str(user_id), k=k)
        if exclude_seen is not None:
            request.exclude_seen = exclude_seen
        if recent is not None:
            request.recent_movie_ids.extend(_movie_ids(recent))
    except (TypeError, ValueError) as exc:  # wrong type / out of the field's range
        raise ConfigurationError(f"invalid recommend request: {exc}") from exc
    return request


def _movie_ids(values: Iterable[int]) -> list[int]:
    ids: list[int] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"recent movies must be integer movie ids, got {value!r}")
        ids.append(int(value))
    return ids


def batch_from_proto(response: recommender_pb2.RecommendBatchResponse) -> BatchRecommendations:
    return BatchRecommendations(
        results=[
            UserRecommendations(
                user_id=r.user_id,
                items=[item_from_proto(i) for i in r.items],
                cold_start=r.cold_start,
            )
            for r in response.results
        ],
        model_version=response.model_version,
    )


def similar_from_proto(response: recommender_pb2.SimilarItemsResponse) -> SimilarItems:
    return SimilarItems(
        movie=item_from_proto(response.movie),
        items=[item_from_proto(i) for i in response.items],
        model_version=response.model_version,
    )


def model_status_from_proto(status: recommender_pb2.ModelStatus) -> ModelStatus:
    return ModelStatus(
        served_version=_version(status.served_version),
        model_kind=status.model_kind,
        loaded_at=_time(status, "loaded_at"),
        versions=[
            ModelVersionInfo(
                version=v.version,
                state=_enum_name(recommender_pb2.ModelVersion.State, v.state),
                reason=v.reason,
                model_kind=v.model_kind,
                metrics=_metrics(v.metrics),
            )
            for v in status.versions
        ],
        metrics=_metrics(status.metrics),
        num_users=status.num_users,
        num_items=status.num_items,
        pinned_version=_version(status.pinned_version),
        model_root=status.model_root,
        pin_source=(_enum_name(recommender_pb2.ModelStatus.PinSource, status.pin_source)
                    if status.pin_source else None),
        pin_problem=status.pin_problem,
        genres=[GenreCount(name=g.name, movies=g.movies) for g in status.genres],
    )


def versions_from_proto(response: trainer_pb2.ListVersionsResponse) -> Versions:
    return Versions(
        versions=[
            PublishedVersion(
                version=v.version,
                model_kind=v.model_kind,
                metrics=_metrics(v.metrics),
                created_at=_time(v, "created_at"),
                size_bytes=v.size_bytes,
                pinned=v.pinned,
                served_by=list(v.served_by),
            )
            for v in response.versions
        ],
        pinned_version=_version(response.pinned_version),
    )


def pin_from_proto(response: trainer_pb2.PinVersionResponse) -> Pin:
    return Pin(
        pinned_version=_version(response.pinned_version),
        previous_pinned_version=_version(response.previous_pinned_version),
    )


def progress_from_proto(progress: trainer_pb2.Progress) -> Progress:
    return Progress(
        phase=progress.phase,
        epoch=progress.epoch,
        total_epochs=progress.total_epochs,
        step=progress.step,
        steps_per_epoch=progress.steps_per_epoch,
        loss=progress.loss,
        elapsed_seconds=progress.elapsed_seconds,
        validation=_metrics(progress.validation),
    )


def job_from_proto(job: trainer_pb2.TrainJob) -> Job:
    return Job(
        id=job.id,
        state=_enum_name(trainer_pb2.TrainJob.State, job.state),
        model=job.request.model,
        progress=progress_from_proto(job.progress),
        loss_history=list(job.loss_history),
        metrics=_metrics(job.metrics),
        baseline_metrics=_metrics(job.baseline_metrics),
        evaluation_split=job.evaluation_split,
        model_version=_version(job.model_version),
        published=job.published,
        not_published_reason=job.not_published_reason,
        error=job.error,
        created_at=_time(job, "created_at"),
        started_at=_time(job, "started_at"),
        finished_at=_time(job, "finished_at"),
        workers=job.request.workers,
    )


def train_request(model: str, **options: Unpack[TrainOptions]) -> trainer_pb2.TrainRequest:
    """Build a TrainRequest; an option left out or ``None`` means "the server's default" (proto zero, or an
    unset optional). An option :class:`TrainOptions` does not name is a ``TypeError``, as for any call."""
    unexpected = sorted(set(options) - set(TrainOptions.__optional_keys__))
    if unexpected:
        raise TypeError(f"unexpected training option(s) {', '.join(map(repr, unexpected))}; "
                        f"known: {', '.join(sorted(TrainOptions.__optional_keys__))}")
    hyperparameters = options.get("hyperparameters") or {}
    unknown = sorted(set(hyperparameters) - set(HYPERPARAMETERS))
    if unknown:
        raise ConfigurationError(
            f"unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(HYPERPARAMETERS)}"
        )
    # Each proto field takes its own type; a wrong one is refused below.
    given: dict[str, Any] = {k: v for k, v in hyperparameters.items() if v is not None}
    try:
        request = trainer_pb2.TrainRequest(
            model=model,
            dataset=trainer_pb2.DatasetSpec(ratings_path=options.get("ratings_path") or "",
                                            items_path=options.get("items_path") or "",
                                            name=options.get("dataset") or ""),
            epochs=options.get("epochs") or 0,
            hyperparameters=trainer_pb2.Hyperparameters(**given),
            evaluation=trainer_pb2.EvaluationSpec(holdout=options.get("holdout") or "",
                                                  holdout_size=options.get("holdout_size") or 0),
            seed=options.get("seed") or 0,
            idempotency_key=options.get("idempotency_key") or "",
            quality_gate=trainer_pb2.QualityGate(
                min_validation_recall_at_10=options.get("min_validation_recall_at_10") or 0.0,
                require_no_regression=options.get("require_no_regression", False),
                disabled=options.get("quality_gate_disabled", False),
            ),
            workers=options.get("workers") or 0,
        )
        refit = options.get("refit")
        if refit is not None:
            request.evaluation.refit = refit
    except (TypeError, ValueError) as exc:  # wrong type / out of the field's range
        raise ConfigurationError(f"invalid training request: {exc}") from exc
    return request
