"""Typed results of the movierec clients (the proto translation is ``clients.wire``).

Why dataclasses instead of handing out the protobuf messages: proto3 cannot
tell "unset" from zero (``model_version == 0`` means "not published",
an unset ``Timestamp`` reads as 1970), enums are bare ints, and maps are
special containers. Callers should see ``None``, ``"SUCCEEDED"``, aware
``datetime`` objects and plain dicts, and should not need to import generated
code. Every proto <-> Python conversion is in one module beside this one,
``clients.wire`` (the ``*_from_proto`` functions and the ``*_request``
builders), so the wire format is handled in one place; this one holds the
values callers see, and checks what they pass in (types only: the server
judges the rest).
"""

from __future__ import annotations

import datetime as dt
import numbers
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypedDict

from movierec.v1 import trainer_pb2
from movierec.v1.vocabulary import FINAL_JOB_STATES as TERMINAL_STATES
from movierec.v1.vocabulary import JOB_STATES, SUCCEEDED  # trainer.proto's TrainJob.State names

from .errors import ConfigurationError

__all__ = [
    "Filter",
    "Item",
    "GenreCount",
    "Recommendations",
    "UserRecommendations",
    "BatchRecommendations",
    "SimilarItems",
    "ModelVersionInfo",
    "ModelStatus",
    "PublishedVersion",
    "OnlineHits",
    "InteractionsUsed",
    "Versions",
    "Pin",
    "HiddenMovies",
    "Interaction",
    "Recorded",
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
    require_beating_baseline: bool  # quality gate: refuse a model below neighbourhood popularity on validation
    quality_gate_disabled: bool  # publish regardless of the trainer's default floor
    workers: int | None  # data-parallel workers (at most the trainer's --workers)
    refit: bool | None  # False: publish the evaluated model itself, not one trained again on all the data
    interactions: bool  # add the interactions recorded in the trainer's event store to the data
    interactions_up_to: int | None  # ... up to this store position (None or 0: the store's latest when the job starts)


# --------------------------------------------------------------------------- recommender


@dataclass(frozen=True, slots=True)
class Filter:
    """Which movies an answer may hold; the conditions combine with AND, and one left empty sets none.

    >>> Filter(genres_any=["Comedy", "Romance"], exclude_movie_ids=[50, 181], min_year=1990, max_year=1999)

    Any collection is taken (a list, a set, a numpy array) and kept as a tuple,
    so a Filter is hashable and can be shared. A single genre name may be given
    as a plain string. Only types are checked here, because a wrong type would
    otherwise reach the server as nonsense (``"Comedy"`` as six one-letter
    genres) or fail deep in protobuf; the limits (10,000 excluded ids, 100,000
    ``only`` ids, 64 genre names), the genre names and the year range are
    checked by the server, which knows them and answers ``InvalidArgument``
    with the numbers. A year of ``None`` (or 0, as on the wire) is no bound; a
    movie of unknown year passes only when neither bound is set.
    """

    exclude_movie_ids: Collection[int] = ()  # never answer these (at most 10,000)
    only_movie_ids: Collection[int] = ()  # answer only from these (at most 100,000); empty: no such condition
    genres_any: Collection[str] = ()  # at least one of these genres (names as ModelStatus.genres lists them)
    genres_all: Collection[str] = ()  # every one of these genres
    exclude_genres: Collection[str] = ()  # none of these genres
    min_year: int | None = None  # release year, inclusive
    max_year: int | None = None

    def __post_init__(self) -> None:
        for name in ("exclude_movie_ids", "only_movie_ids"):
            object.__setattr__(self, name, tuple(movie_ids(getattr(self, name), f"filter.{name}")))
        for name in ("genres_any", "genres_all", "exclude_genres"):
            object.__setattr__(self, name, _genre_names(getattr(self, name), f"filter.{name}"))
        for name in ("min_year", "max_year"):
            year = getattr(self, name)
            if year is not None and (isinstance(year, bool) or not isinstance(year, numbers.Integral)):
                raise ConfigurationError(f"filter.{name} must be a year (an integer) or None, got {year!r}")
            object.__setattr__(self, name, int(year) if year else None)

    @property
    def is_empty(self) -> bool:
        """No condition at all: the answer is the same as without a filter."""
        return not (self.exclude_movie_ids or self.only_movie_ids or self.genres_any or self.genres_all
                    or self.exclude_genres or self.min_year or self.max_year)


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
    # recent movies, and the filter's exclude/only ids, the serving model version does not know (ignored)
    unknown_movie_ids: list[int] = field(default_factory=list)
    # How many movies passed the filter, exclude_seen and the hidden movies; the answer holds min(k, this).
    # None: the server did not say (one older than filters).
    eligible_movies: int | None = None
    # Names this answer: pass it as Interaction.recommendation_id when the user acts on it. None: the
    # recommender records no interactions (--events none), or is older than the feedback loop.
    recommendation_id: str | None = None

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class UserRecommendations:
    user_id: str
    items: list[Item]
    cold_start: bool
    eligible_movies: int | None = None  # as Recommendations.eligible_movies, for this user
    recommendation_id: str | None = None  # as Recommendations.recommendation_id, for this user's answer

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class BatchRecommendations:
    results: list[UserRecommendations]  # in request order
    model_version: int
    unknown_movie_ids: list[int] = field(default_factory=list)  # the filter's ids the version does not know

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
    unknown_movie_ids: list[int] = field(default_factory=list)  # the filter's ids the version does not know
    eligible_movies: int | None = None  # movies that passed the filter and the hidden movies, itself left out

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
    # The operators' hidden movies (TrainerClient.hide_movies) this replica applies: how many, the sequence
    # of the rules it read (0: none read), and why the model root's rules could not be applied ("" when they
    # were; the last rules applied stay in force meanwhile).
    hidden_movies: int = 0
    hidden_sequence: int = 0
    hidden_problem: str = ""
    # The feedback loop: the event store followed ("" with --events none), the store position read up to,
    # the interactions after the served version's watermark held as fresh histories and their users, and
    # why the store cannot be read now ("" when it can).
    events_store: str = ""
    events_followed: int = 0
    fresh_interactions: int = 0
    fresh_users: int = 0
    events_problem: str = ""
    # The served version's online hit rate on this replica: recommendations judged, and the share hit.
    online_judged: int = 0
    online_hit_rate: float = 0.0

    @property
    def serving(self) -> bool:
        return self.served_version is not None


@dataclass(frozen=True, slots=True)
class Interaction:
    """One thing a user did with a movie, for ``RecommenderClient.record``.

    ``event_id``: yours, unique per interaction, so a resend stores nothing twice; None lets the client
    choose one (a random UUID, kept for its own retries of the call). ``rating``: 0.5 to 5, or None.
    ``occurred_at``: an aware datetime, or None for the time the recommender receives it.
    ``recommendation_id``: the answer that led to it (``Recommendations.recommendation_id``), if any.
    """

    user_id: str | int
    movie_id: int
    rating: float | None = None
    occurred_at: dt.datetime | None = None
    event_id: str | None = None
    recommendation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a RecordInteractions call stored: ``stored`` new, ``duplicates`` resent unchanged (nothing
    written), movies the served version does not know (stored anyway), and the store's position after it."""

    stored: int
    duplicates: int
    unknown_movie_ids: list[int]
    watermark: int
    event_ids: list[str]  # the ids sent, in order (the client's own where you gave none)


# --------------------------------------------------------------------------- trainer


@dataclass(frozen=True, slots=True)
class Progress:
    # "queued", "loading data", "reading interactions", "training", "evaluating", "refitting", "publishing", "done"
    phase: str
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
    # What queued it: "request" (a Train call), "retrain_after_interactions" or "retrain_every" (the
    # trainer's retrain policy).
    trigger: str = "request"
    interactions: bool = False  # asked to add recorded interactions to its data
    interactions_watermark: int | None = None  # the store position they go up to, once known; None: none

    @property
    def done(self) -> bool:
        """The job has ended (succeeded, failed or was cancelled)."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == SUCCEEDED


# A dataclass field marked so is left out of ``--json`` output while it is None (render.json_text):
# figures only some versions have.
OMIT_WHEN_NONE = {"omit_when_none": True}


@dataclass(frozen=True, slots=True)
class OnlineHits:
    """How a version does live: recommendations its replicas judged (followed by the user's next 10
    interactions, or 24 hours old), and how many were hits (one of those interactions was with a
    recommended movie)."""

    judged: int
    hits: int
    hit_rate: float


@dataclass(frozen=True, slots=True)
class InteractionsUsed:
    """The recorded interactions a version was trained on besides its base data (its metadata.json)."""

    store_id: str  # the event store's identity: the watermark is a position in that store
    store: str  # its URL, password redacted
    watermark: int  # every interaction up to this store position was read
    read: int
    used: int  # in the training data
    replaced: int  # ratings and earlier interactions a later interaction of the same (user, movie) replaced
    unknown_movies: int  # left out: movies the items data does not list
    new_users: int  # users the base data did not have


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
    # None: no recommendation of it judged yet (or the trainer could not read them: Versions.online_problem)
    online: OnlineHits | None = field(default=None, metadata=OMIT_WHEN_NONE)
    # None: trained on its base data alone
    interactions: InteractionsUsed | None = field(default=None, metadata=OMIT_WHEN_NONE)


@dataclass(frozen=True, slots=True)
class Versions:
    versions: list[PublishedVersion]  # newest first
    pinned_version: int | None  # None: recommenders follow the newest valid version
    # Why no version has online figures when the trainer could not read them (interactions off, store down)
    online_problem: str = ""

    def __iter__(self) -> Iterator[PublishedVersion]:
        return iter(self.versions)

    def __len__(self) -> int:
        return len(self.versions)


@dataclass(frozen=True, slots=True)
class Pin:
    pinned_version: int | None  # pinned now; None: recommenders follow the newest valid version
    previous_pinned_version: int | None


@dataclass(frozen=True, slots=True)
class HiddenMovies:
    """The movies the operators hid from every answer, as the model root holds them."""

    movie_ids: list[int]  # ascending
    # Grows by one with every change; ModelStatus.hidden_sequence says which rules a replica applies.
    sequence: int

    def __iter__(self) -> Iterator[int]:
        return iter(self.movie_ids)

    def __len__(self) -> int:
        return len(self.movie_ids)

    def __contains__(self, movie_id: object) -> bool:
        return movie_id in self.movie_ids


# --------------------------------------------------------------------------- checks of what callers pass


def movie_ids(values: Iterable[int], what: str) -> list[int]:
    """``values`` as a list of ints; ``what`` names them in the ConfigurationError for anything else
    (protobuf would take ``"50"`` for an error about the field's type, and a string for its characters)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigurationError(f"{what} must be a collection of integer movie ids, got {values!r}")
    ids: list[int] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigurationError(f"{what} must be integer movie ids, got {value!r}")
        ids.append(int(value))
    return ids


def _genre_names(values: Collection[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        return (values,)  # one genre
    if not isinstance(values, Iterable):
        raise ConfigurationError(f"{what} must be genre names, got {values!r}")
    names = tuple(values)
    for name in names:
        if not isinstance(name, str):
            raise ConfigurationError(f"{what} must be genre names (strings), got {name!r}")
    return names
