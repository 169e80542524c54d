"""The Recommender gRPC servicer: a thin adapter between protos and the domain.

It checks requests against the limits below, translates protos to calls on
the served version and answers back to protos; every condition a caller can
meet is a ``recommender_service.errors`` exception, turned into its status in
one place (:func:`_answering`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from movierec.v1 import recommender_pb2, recommender_pb2_grpc
from movierec_common import metrics
from movierec_common.event_store import Interaction
from recommender_service.answers import DEFAULT_BUDGET_BYTES, ServedAnswers
from recommender_service.batches import check_live_cost, recommend_batch
from recommender_service.errors import (
    CallEnded,
    DeadlinePassed,
    EventsOff,
    InvalidRequest,
    NoModelLoaded,
    RecommenderError,
    TooCostly,
    status,
)
from recommender_service.feedback_loop import NO_MOVIES, FeedbackLoop
from recommender_service.interactions import check_batch, check_size
from recommender_service.model import LoadedModel
from recommender_service.movie_filter import NO_FILTER, MovieFilter
from recommender_service.registry import ModelRegistry
from recommender_service.retrieval import Recommendation, Scored

MAX_K = 1000
# A session is what the caller just did, not a whole history; this bounds the
# work one call can ask for (and the message stays far below 4 MB).
MAX_RECENT_MOVIES = 1000
MAX_USER_ID_BYTES = 256
MAX_BATCH_USERS = 1000
MAX_BATCH_ITEMS = 100_000
# Live scoring one batch may ask for: users answered by a scan (see
# batches.live_users) x movies in the catalogue. 100 M is ~3 s of one core at
# 256 dimensions, measured; the largest batch the tests send legitimately (the
# SIGTERM drain test, 1,000 users x 80,000 movies, exclude_seen=false) is 80 M.
# A 1,000-user scan of MovieLens 25M's 62,000 movies passes, of a 100,000-movie
# catalogue does not: split it. Beyond it: RESOURCE_EXHAUSTED, with the figures.
MAX_BATCH_LIVE_SCORES = 100_000_000
# The most a batch answer may weigh on the wire. The static limits do not bound
# it, titles do: 100,000 items of 30-byte titles are ~4.5 MB, of 320-byte ones
# ~33 MB. The client accepts up to 64 MB (clients/client.py), so an answer that
# would be refused there is refused here, with its size, before it is sent.
MAX_BATCH_ANSWER_BYTES = 32 * 1024 * 1024

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[["RecommenderServicer", Request, grpc.ServicerContext], Response]


def _answering(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Runs an RPC handler; a RecommenderError it raises becomes the call's status (errors.status)."""

    @functools.wraps(handler)
    def answer(servicer: RecommenderServicer, request: Request, context: grpc.ServicerContext) -> Response:
        try:
            return handler(servicer, request, context)
        except RecommenderError as error:
            context.abort(*status(error))

    return answer


def _items(scored: list[Scored]) -> list[recommender_pb2.RecommendedItem]:
    return [recommender_pb2.RecommendedItem(movie_id=s.movie_id, title=s.title, score=s.score, genres=s.genres,
                                            year=s.year) for s in scored]


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InvalidRequest(f"k must be between 1 and {MAX_K}, got {k}")


def _check_user_id(user_id: str, field: str = "user_id") -> None:
    if not user_id.strip():
        raise InvalidRequest(f"{field} is empty; pass the user's id, e.g. \"42\"")
    if len(user_id.encode("utf-8")) > MAX_USER_ID_BYTES:
        raise InvalidRequest(f"{field} is longer than {MAX_USER_ID_BYTES} bytes")


def _check_recent(recent_movie_ids: Sequence[int]) -> None:
    if len(recent_movie_ids) > MAX_RECENT_MOVIES:
        raise InvalidRequest(f"recent_movie_ids holds {len(recent_movie_ids)} movies; at most {MAX_RECENT_MOVIES} "
                             f"are accepted: send the newest {MAX_RECENT_MOVIES}")


def _movie_filter(request: Any, rpc: str) -> MovieFilter:
    """The request's ``filter``, parsed once here (limits checked: InvalidRequest); NO_FILTER when unset."""
    if not request.HasField("filter"):
        return NO_FILTER
    metrics.filtered_request(rpc)
    f = request.filter
    movie_filter = MovieFilter.checked(
        exclude_movie_ids=np.asarray(f.exclude_movie_ids, dtype=np.int64),
        only_movie_ids=np.asarray(f.only_movie_ids, dtype=np.int64),
        genres_any=f.genres_any, genres_all=f.genres_all, exclude_genres=f.exclude_genres,
        min_year=f.min_year, max_year=f.max_year)
    return NO_FILTER if movie_filter.is_empty else movie_filter


def _exclude_seen(request: Any) -> bool:
    return bool(request.exclude_seen) if request.HasField("exclude_seen") else True


def _deadline_passed(context: grpc.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _should_stop(context: grpc.ServicerContext) -> Callable[[], bool]:
    """For domain code: has the caller gone (cancelled, disconnected) or its deadline passed?"""
    return lambda: not context.is_active() or _deadline_passed(context)


def _why_ended(ended: CallEnded, context: grpc.ServicerContext) -> RecommenderError:
    """DEADLINE_EXCEEDED when the deadline is why the batch stopped, else CANCELLED (the caller left)."""
    return DeadlinePassed(str(ended)) if _deadline_passed(context) else ended


def _batch_response(model: LoadedModel, user_ids: Sequence[str], ranked: list[Recommendation],
                    unknown_movie_ids: list[int]) -> recommender_pb2.RecommendBatchResponse:
    answer = recommender_pb2.RecommendBatchResponse(model_version=model.version, results=[
        recommender_pb2.UserRecommendations(user_id=user_id, items=_items(result.items), cold_start=result.cold_start,
                                            eligible_movies=result.eligible_movies)
        for user_id, result in zip(user_ids, ranked, strict=True)], unknown_movie_ids=unknown_movie_ids)
    size = answer.ByteSize()
    if size > MAX_BATCH_ANSWER_BYTES:
        raise TooCostly(f"the answer would be {size:,} bytes; a batch answer may be at most "
                        f"{MAX_BATCH_ANSWER_BYTES:,} bytes (long titles make items large): split the batch or "
                        f"lower k")
    return answer


def _recommend_response(model: LoadedModel, result: Recommendation) -> recommender_pb2.RecommendResponse:
    return recommender_pb2.RecommendResponse(items=_items(result.items), model_version=model.version,
                                             cold_start=result.cold_start, unknown_movie_ids=result.unknown_movie_ids,
                                             eligible_movies=result.eligible_movies)


def _interactions(request: recommender_pb2.RecordInteractionsRequest, received_at: float) -> list[Interaction]:
    return [Interaction(event_id=i.event_id, user_id=i.user_id, movie_id=i.movie_id,
                        rating=i.rating if i.HasField("rating") else None,
                        occurred_at=i.occurred_at.ToNanoseconds() / 1e9 if i.HasField("occurred_at") else received_at,
                        occurred_at_given=i.HasField("occurred_at"), recommendation_id=i.recommendation_id or None)
            for i in request.interactions]


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self, registry: ModelRegistry, answer_cache_bytes: int = DEFAULT_BUDGET_BYTES,
                 loop: FeedbackLoop | None = None):
        self._registry = registry
        self._answers = ServedAnswers(answer_cache_bytes)
        self._loop = loop  # None: interactions are off (--events none), and answers carry no recommendation id

    def _history(self, user_id: str, model: LoadedModel) -> np.ndarray:
        return NO_MOVIES if self._loop is None else self._loop.fresh_movies(user_id, model)

    def _judged(self, model: LoadedModel, user_id: str,
                answer: recommender_pb2.RecommendResponse) -> recommender_pb2.RecommendResponse:
        """``answer`` with a recommendation id, opened for the online hit rate (a copy: a kept answer is
        shared; copying costs under a microsecond)."""
        if self._loop is None:
            return answer
        judged = recommender_pb2.RecommendResponse()
        judged.CopyFrom(answer)
        judged.recommendation_id = self._loop.recommended(user_id, model.version, [i.movie_id for i in answer.items])
        return judged

    def _model(self, context: grpc.ServicerContext) -> LoadedModel:
        """The version this call will use from start to end; checked before any work."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlinePassed()
        model = self._registry.current()
        if model is None:
            raise NoModelLoaded()
        return model

    @_answering
    def Recommend(self, request: recommender_pb2.RecommendRequest,
                  context: grpc.ServicerContext) -> recommender_pb2.RecommendResponse:
        _check_user_id(request.user_id)
        _check_k(request.k)
        _check_recent(request.recent_movie_ids)
        movie_filter = _movie_filter(request, "Recommend")
        model = self._model(context)
        hidden = self._registry.hidden_rules().movie_ids
        history = self._history(request.user_id, model)
        if request.recent_movie_ids or history.size:  # a session or a fresh history: never kept
            if request.recent_movie_ids:
                metrics.session_request()
            answer = model.recommend(request.user_id, request.k, _exclude_seen(request), _recommend_response,
                                     request.recent_movie_ids, model.restriction(movie_filter, hidden), history)
        elif movie_filter is not NO_FILTER:  # filtered: answered by the version, never kept
            answer = model.recommend(request.user_id, request.k, _exclude_seen(request), _recommend_response,
                                     restriction=model.restriction(movie_filter, hidden))
        else:
            answer = self._answers.recommend(model, request.user_id, request.k, _exclude_seen(request),
                                             _recommend_response, hidden)
        return self._judged(model, request.user_id, answer)

    @_answering
    def RecommendBatch(self, request: recommender_pb2.RecommendBatchRequest,
                       context: grpc.ServicerContext) -> recommender_pb2.RecommendBatchResponse:
        if not request.user_ids:
            raise InvalidRequest("user_ids is empty")
        if len(request.user_ids) > MAX_BATCH_USERS:
            raise InvalidRequest(f"at most {MAX_BATCH_USERS} users per batch, got {len(request.user_ids)}")
        for position, user_id in enumerate(request.user_ids):
            _check_user_id(user_id, f"user_ids[{position}]")
        _check_k(request.k)
        if len(request.user_ids) * request.k > MAX_BATCH_ITEMS:
            raise InvalidRequest(f"users x k must be at most {MAX_BATCH_ITEMS} per batch "
                                 f"(got {len(request.user_ids)} x {request.k}); split the batch or lower k")
        movie_filter = _movie_filter(request, "RecommendBatch")
        model = self._model(context)
        restriction = model.restriction(movie_filter, self._registry.hidden_rules().movie_ids)
        exclude = _exclude_seen(request)
        loop = self._loop
        history = functools.partial(self._history, model=model)
        check_live_cost(model.retriever, request.user_ids, request.k, exclude, MAX_BATCH_LIVE_SCORES, restriction,
                        history)
        try:
            ranked = recommend_batch(model.retriever, request.user_ids, request.k, exclude, _should_stop(context),
                                     restriction, history)
        except CallEnded as ended:
            raise _why_ended(ended, context) from None
        answer = _batch_response(model, request.user_ids, ranked, restriction.unknown_movie_ids)
        if loop is not None:
            for user_id, result, user_answer in zip(request.user_ids, ranked, answer.results, strict=True):
                user_answer.recommendation_id = loop.recommended(user_id, model.version,
                                                                 [item.movie_id for item in result.items])
        return answer

    @_answering
    def SimilarItems(self, request: recommender_pb2.SimilarItemsRequest,
                     context: grpc.ServicerContext) -> recommender_pb2.SimilarItemsResponse:
        _check_k(request.k)
        movie_filter = _movie_filter(request, "SimilarItems")
        model = self._model(context)
        restriction = model.restriction(movie_filter, self._registry.hidden_rules().movie_ids)
        movie, similar = model.similar_items(request.movie_id, request.k, restriction)
        return recommender_pb2.SimilarItemsResponse(
            movie=_items([movie])[0], items=_items(similar.items), model_version=model.version,
            unknown_movie_ids=similar.unknown_movie_ids, eligible_movies=similar.eligible_movies)

    @_answering
    def RecordInteractions(self, request: recommender_pb2.RecordInteractionsRequest,
                           context: grpc.ServicerContext) -> recommender_pb2.RecordInteractionsResponse:
        if _deadline_passed(context):  # nobody waits for the answer: write nothing
            raise DeadlinePassed()
        check_size(len(request.interactions))  # before building a value per interaction
        batch = _interactions(request, time.time())
        check_batch(batch, _check_user_id)
        if self._loop is None:
            raise EventsOff()
        model = self._registry.current()
        recorded = self._loop.record(batch, None if model is None else model.retriever.movie_indices)
        return recommender_pb2.RecordInteractionsResponse(
            stored=recorded.stored, duplicates=recorded.duplicates, watermark=recorded.watermark,
            unknown_movie_ids=recorded.unknown_movie_ids)

    def GetModelStatus(self, request: recommender_pb2.GetModelStatusRequest,
                       context: grpc.ServicerContext) -> recommender_pb2.ModelStatus:
        model, versions = self._registry.status()
        hidden = self._registry.hidden_rules()
        answer = recommender_pb2.ModelStatus(
            model_root=self._registry.model_root,
            pinned_version=self._registry.pinned_version or 0,
            pin_source=self._registry.pin_source or "PIN_SOURCE_UNSPECIFIED",
            pin_problem=self._registry.pin_problem,
            hidden_movies=hidden.movie_ids.size,
            hidden_sequence=hidden.sequence,
            hidden_problem=self._registry.hidden_problem,
            versions=[
                recommender_pb2.ModelVersion(
                    version=v.version, state=v.state, reason=v.reason, model_kind=v.model_kind, metrics=v.metrics)
                for v in versions
            ],
        )
        if model is not None:
            loaded_at = Timestamp()
            loaded_at.FromNanoseconds(int(model.loaded_at * 1e9))
            answer.served_version = model.version
            answer.model_kind = model.model_kind
            answer.loaded_at.CopyFrom(loaded_at)
            answer.metrics.update(model.metadata.metrics)
            answer.metrics.update(model.serving)  # serving_ann, serving_ann_nprobe, serving_smoke_recall_at_10, ...
            answer.num_users = model.retriever.num_users
            answer.num_items = model.retriever.num_items
            answer.genres.extend(recommender_pb2.GenreCount(name=name, movies=count)
                                 for name, count in model.genre_counts)
        if self._loop is not None:
            loop = self._loop.status()
            answer.events_store, answer.events_followed, answer.events_problem = loop.store, loop.followed, loop.problem
            answer.fresh_users, answer.fresh_interactions = loop.fresh_users, loop.fresh_interactions
            if model is not None:
                online = self._loop.online.totals().get(model.version)
                if online is not None:
                    answer.online_judged, answer.online_hit_rate = online.judged, online.hit_rate
        return answer
