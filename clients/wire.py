"""The only proto <-> Python translation of the movierec clients.

``*_from_proto`` turns responses into the typed values of ``clients.types``;
the ``*_request`` builders (and :func:`filter_to_proto`) turn what a caller
passes into requests, raising ConfigurationError for what protobuf would
refuse or misread. Nothing else in the clients touches generated message
fields, so a change of the wire format is a change here.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Unpack

from google.protobuf import timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message

from movierec.v1 import recommender_pb2, trainer_pb2

from .errors import ConfigurationError
from .types import (
    HYPERPARAMETERS,
    BatchRecommendations,
    Filter,
    GenreCount,
    HiddenMovies,
    Interaction,
    InteractionsUsed,
    Item,
    Job,
    ModelStatus,
    ModelVersionInfo,
    OnlineHits,
    Pin,
    Progress,
    PublishedVersion,
    Recommendations,
    Recorded,
    SimilarItems,
    TrainOptions,
    UserRecommendations,
    Versions,
    movie_ids,
)


def filter_to_proto(f: Filter) -> recommender_pb2.Filter:
    try:
        return recommender_pb2.Filter(
            exclude_movie_ids=f.exclude_movie_ids, only_movie_ids=f.only_movie_ids,
            genres_any=f.genres_any, genres_all=f.genres_all, exclude_genres=f.exclude_genres,
            min_year=f.min_year or 0, max_year=f.max_year or 0,
        )
    except ValueError as exc:  # an id beyond int64, a year beyond int32
        raise ConfigurationError(f"invalid filter: {exc}") from exc


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
        eligible_movies=_eligible(response.eligible_movies, len(response.items)),
        recommendation_id=response.recommendation_id or None,
    )


def recommend_request(
    user_id: str | int,
    k: int,
    *,
    exclude_seen: bool | None = None,
    recent: Iterable[int] | None = None,
    filter: Filter | None = None,
) -> recommender_pb2.RecommendRequest:
    """Build a RecommendRequest; ``exclude_seen=None`` leaves the server default (true)."""
    try:
        request = recommender_pb2.RecommendRequest(user_id=str(user_id), k=k)
        if exclude_seen is not None:
            request.exclude_seen = exclude_seen
        if recent is not None:
            request.recent_movie_ids.extend(movie_ids(recent, "recent movies"))
    except (TypeError, ValueError) as exc:  # wrong type / out of the field's range
        raise ConfigurationError(f"invalid recommend request: {exc}") from exc
    _set_filter(request, filter)
    return request


def batch_request(
    user_ids: Iterable[str | int], k: int, *, exclude_seen: bool | None = None, filter: Filter | None = None
) -> recommender_pb2.RecommendBatchRequest:
    """Build a RecommendBatchRequest; the filter applies to every user of the batch."""
    try:
        request = recommender_pb2.RecommendBatchRequest(user_ids=[str(u) for u in user_ids], k=k)
        if exclude_seen is not None:
            request.exclude_seen = exclude_seen
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"invalid recommend batch request: {exc}") from exc
    _set_filter(request, filter)
    return request


def similar_request(movie_id: int, k: int, *, filter: Filter | None = None) -> recommender_pb2.SimilarItemsRequest:
    try:
        request = recommender_pb2.SimilarItemsRequest(movie_id=int(movie_id), k=k)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"invalid similar items request: {exc}") from exc
    _set_filter(request, filter)
    return request


def _set_filter(
    request: recommender_pb2.RecommendRequest | recommender_pb2.RecommendBatchRequest
    | recommender_pb2.SimilarItemsRequest,
    filter: Filter | None,
) -> None:
    if filter is None:
        return
    if not isinstance(filter, Filter):
        raise ConfigurationError(f"filter must be a clients.Filter, got {type(filter).__name__}")
    if not filter.is_empty:  # an empty Filter is sent as none: the same answer, by the server's unfiltered path
        request.filter.CopyFrom(filter_to_proto(filter))


def _eligible(count: int, answered: int) -> int | None:
    # A server older than filters leaves the field 0 while answering movies: it did not say.
    return None if count == 0 and answered else count


def batch_from_proto(response: recommender_pb2.RecommendBatchResponse) -> BatchRecommendations:
    return BatchRecommendations(
        results=[
            UserRecommendations(
                user_id=r.user_id,
                items=[item_from_proto(i) for i in r.items],
                cold_start=r.cold_start,
                eligible_movies=_eligible(r.eligible_movies, len(r.items)),
                recommendation_id=r.recommendation_id or None,
            )
            for r in response.results
        ],
        model_version=response.model_version,
        unknown_movie_ids=list(response.unknown_movie_ids),
    )


def similar_from_proto(response: recommender_pb2.SimilarItemsResponse) -> SimilarItems:
    return SimilarItems(
        movie=item_from_proto(response.movie),
        items=[item_from_proto(i) for i in response.items],
        model_version=response.model_version,
        unknown_movie_ids=list(response.unknown_movie_ids),
        eligible_movies=_eligible(response.eligible_movies, len(response.items)),
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
        hidden_movies=status.hidden_movies,
        hidden_sequence=status.hidden_sequence,
        hidden_problem=status.hidden_problem,
        events_store=status.events_store,
        events_followed=status.events_followed,
        fresh_interactions=status.fresh_interactions,
        fresh_users=status.fresh_users,
        events_problem=status.events_problem,
        online_judged=status.online_judged,
        online_hit_rate=status.online_hit_rate,
    )


def _online(v: trainer_pb2.VersionInfo) -> OnlineHits | None:
    if not v.online_judged:
        return None
    return OnlineHits(judged=v.online_judged, hits=v.online_hits, hit_rate=v.online_hit_rate)


def _interactions(v: trainer_pb2.VersionInfo) -> InteractionsUsed | None:
    if not v.HasField("interactions"):
        return None
    i = v.interactions
    return InteractionsUsed(store_id=i.store_id, store=i.store, watermark=i.watermark, read=i.read, used=i.used,
                            replaced=i.replaced, unknown_movies=i.unknown_movies, new_users=i.new_users)


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
                online=_online(v),
                interactions=_interactions(v),
            )
            for v in response.versions
        ],
        pinned_version=_version(response.pinned_version),
        online_problem=response.online_problem,
    )


def pin_from_proto(response: trainer_pb2.PinVersionResponse) -> Pin:
    return Pin(
        pinned_version=_version(response.pinned_version),
        previous_pinned_version=_version(response.previous_pinned_version),
    )


def hidden_from_proto(response: trainer_pb2.HiddenMovies) -> HiddenMovies:
    return HiddenMovies(movie_ids=list(response.movie_ids), sequence=response.sequence)


def hide_request(values: Iterable[int]) -> trainer_pb2.HideMoviesRequest:
    try:
        return trainer_pb2.HideMoviesRequest(movie_ids=movie_ids(values, "movie ids to hide"))
    except ValueError as exc:  # ConfigurationError is one; an id beyond int64
        raise ConfigurationError(f"invalid hide request: {exc}") from exc


def unhide_request(values: Iterable[int]) -> trainer_pb2.UnhideMoviesRequest:
    try:
        return trainer_pb2.UnhideMoviesRequest(movie_ids=movie_ids(values, "movie ids to unhide"))
    except ValueError as exc:
        raise ConfigurationError(f"invalid unhide request: {exc}") from exc


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
        trigger=job.trigger or "request",  # trainers older than the field: every job was a request
        interactions=job.request.dataset.interactions.include,
        interactions_watermark=job.interactions_watermark or None,
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
                                            name=options.get("dataset") or "",
                                            interactions=trainer_pb2.InteractionsSpec(
                                                include=options.get("interactions", False),
                                                up_to=options.get("interactions_up_to") or 0)),
            epochs=options.get("epochs") or 0,
            hyperparameters=trainer_pb2.Hyperparameters(**given),
            evaluation=trainer_pb2.EvaluationSpec(holdout=options.get("holdout") or "",
                                                  holdout_size=options.get("holdout_size") or 0),
            seed=options.get("seed") or 0,
            idempotency_key=options.get("idempotency_key") or "",
            quality_gate=trainer_pb2.QualityGate(
                min_validation_recall_at_10=options.get("min_validation_recall_at_10") or 0.0,
                require_no_regression=options.get("require_no_regression", False),
                require_beating_baseline=options.get("require_beating_baseline", False),
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


def record_request(interactions: Iterable[Interaction]) -> recommender_pb2.RecordInteractionsRequest:
    """A RecordInteractionsRequest; an interaction without an event id gets a random UUID here, once, so the
    client's retries of this request resend the same ids."""
    request = recommender_pb2.RecordInteractionsRequest()
    try:
        for interaction in interactions:
            if not isinstance(interaction, Interaction):
                raise ConfigurationError(f"record() takes clients.Interaction values, got {interaction!r}")
            item = request.interactions.add(event_id=interaction.event_id or uuid.uuid4().hex,
                                            user_id=str(interaction.user_id), movie_id=int(interaction.movie_id))
            if interaction.rating is not None:
                item.rating = float(interaction.rating)
            if interaction.recommendation_id:
                item.recommendation_id = interaction.recommendation_id
            if interaction.occurred_at is not None:
                if interaction.occurred_at.tzinfo is None:
                    raise ConfigurationError("occurred_at must be an aware datetime (with a time zone)")
                item.occurred_at.FromDatetime(interaction.occurred_at)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"invalid interaction: {exc}") from exc
    return request


def recorded_from_proto(request: recommender_pb2.RecordInteractionsRequest,
                        response: recommender_pb2.RecordInteractionsResponse) -> Recorded:
    return Recorded(stored=response.stored, duplicates=response.duplicates,
                    unknown_movie_ids=list(response.unknown_movie_ids), watermark=response.watermark,
                    event_ids=[i.event_id for i in request.interactions])
