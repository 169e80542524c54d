"""The Recommender gRPC servicer: request checks, proto translation, status codes."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from movierec.v1 import recommender_pb2, recommender_pb2_grpc
from recommender_service.registry import LoadedModel, ModelRegistry
from recommender_service.retrieval import Recommendation, Scored, UnknownMovie
from recommender_service.sessions import SessionsUnsupported

MAX_K = 1000
# A session is what the caller just did, not a whole history; this bounds the
# work one call can ask for (and the message stays far below 4 MB).
MAX_RECENT_MOVIES = 1000
MAX_USER_ID_BYTES = 256
MAX_BATCH_USERS = 1000
# Keeps a batch answer under the default 4 MB message limit of gRPC clients.
MAX_BATCH_ITEMS = 100_000

_STATE = recommender_pb2.ModelVersion.State


def _items(scored: list[Scored]) -> list[recommender_pb2.RecommendedItem]:
    return [recommender_pb2.RecommendedItem(movie_id=s.movie_id, title=s.title, score=s.score) for s in scored]


def _check_k(k: int, context) -> None:
    if not 1 <= k <= MAX_K:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k must be between 1 and {MAX_K}, got {k}")


def _check_user_id(user_id: str, context, field: str = "user_id") -> None:
    if not user_id.strip():
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field} is empty; pass the user's id, e.g. \"42\"")
    if len(user_id.encode("utf-8")) > MAX_USER_ID_BYTES:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field} is longer than {MAX_USER_ID_BYTES} bytes")


def _check_recent(recent_movie_ids, context) -> None:
    if len(recent_movie_ids) > MAX_RECENT_MOVIES:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"recent_movie_ids holds {len(recent_movie_ids)} movies; at most {MAX_RECENT_MOVIES} are "
                      f"accepted: send the newest {MAX_RECENT_MOVIES}")


def _exclude_seen(request) -> bool:
    return request.exclude_seen if request.HasField("exclude_seen") else True


# Answers without a session are a pure function of (version, user, k,
# exclude_seen), so each version keeps the ones it has built; a hit skips building ten messages,
# which matters less for its ~10 us than for the GIL hand-offs it saves when
# eight request threads share two cores. Bounded: about 1 KB an entry.
MAX_CACHED_RESPONSES = 20_000


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self, registry: ModelRegistry):
        self._registry = registry
        self._responses: tuple[int, dict] = (0, {})

    def _cached_responses(self, model: LoadedModel) -> dict:
        version, cache = self._responses
        if version != model.version:
            cache = {}
            self._responses = (model.version, cache)
        return cache

    def _model(self, context) -> LoadedModel:
        """The version this call will use from start to end; checked before any work."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call was handled")
        model = self._registry.current()
        if model is None:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          "no model is loaded yet: publish one with `movierec train`, then retry "
                          "(GetModelStatus shows rejected versions)")
        return model

    def Recommend(self, request, context):
        _check_user_id(request.user_id, context)
        _check_k(request.k, context)
        _check_recent(request.recent_movie_ids, context)
        model = self._model(context)
        exclude = _exclude_seen(request)
        if request.recent_movie_ids:  # sessions vary call by call: never cached
            return self._recommend_session(model, request, exclude, context)
        cache = self._cached_responses(model)
        key = (request.user_id, request.k, exclude)
        response = cache.get(key)
        if response is None:
            result = model.retriever.recommend(request.user_id, request.k, exclude)
            response = recommender_pb2.RecommendResponse(
                items=_items(result.items), model_version=model.version, cold_start=result.cold_start)
            if len(cache) < MAX_CACHED_RESPONSES:
                cache[key] = response
        return response

    @staticmethod
    def _recommend_session(model: LoadedModel, request, exclude: bool, context):
        try:
            result: Recommendation = model.retriever.recommend_session(
                request.user_id, request.k, list(request.recent_movie_ids), exclude)
        except SessionsUnsupported:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"model version {model.version} was published before sessions were supported; "
                          f"retrain to answer recent_movie_ids")
        return recommender_pb2.RecommendResponse(
            items=_items(result.items), model_version=model.version, cold_start=result.cold_start,
            unknown_movie_ids=result.unknown_movie_ids)

    def RecommendBatch(self, request, context):
        if not request.user_ids:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_ids is empty")
        if len(request.user_ids) > MAX_BATCH_USERS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"at most {MAX_BATCH_USERS} users per batch, got {len(request.user_ids)}")
        for position, user_id in enumerate(request.user_ids):
            _check_user_id(user_id, context, f"user_ids[{position}]")
        _check_k(request.k, context)
        if len(request.user_ids) * request.k > MAX_BATCH_ITEMS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"users x k must be at most {MAX_BATCH_ITEMS} per batch "
                          f"(got {len(request.user_ids)} x {request.k}); split the batch or lower k")
        model = self._model(context)
        exclude = _exclude_seen(request)
        results = []
        for user_id in request.user_ids:
            result = model.retriever.recommend(user_id, request.k, exclude)
            results.append(recommender_pb2.UserRecommendations(
                user_id=user_id, items=_items(result.items), cold_start=result.cold_start))
        return recommender_pb2.RecommendBatchResponse(results=results, model_version=model.version)

    def SimilarItems(self, request, context):
        _check_k(request.k, context)
        model = self._model(context)
        try:
            movie, similar = model.retriever.similar_items(request.movie_id, request.k)
        except UnknownMovie:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"movie {request.movie_id} is not in model version {model.version}")
        return recommender_pb2.SimilarItemsResponse(
            movie=_items([movie])[0], items=_items(similar), model_version=model.version)

    def GetModelStatus(self, request, context):
        model, versions = self._registry.status()
        status = recommender_pb2.ModelStatus(
            model_root=self._registry.model_root,
            pinned_version=self._registry.pinned_version or 0,
            versions=[
                recommender_pb2.ModelVersion(
                    version=v.version, state=_STATE.Value(v.state), reason=v.reason,
                    model_kind=v.model_kind, metrics=v.metrics)
                for v in versions
            ],
        )
        if model is not None:
            loaded_at = Timestamp()
            loaded_at.FromNanoseconds(int(model.loaded_at * 1e9))
            status.served_version = model.version
            status.model_kind = model.model_kind
            status.loaded_at.CopyFrom(loaded_at)
            status.metrics.update({k: float(v) for k, v in model.metadata.get("metrics", {}).items()})
            status.metrics.update(model.serving)  # serving_ann, serving_ann_nprobe, serving_smoke_recall_at_10, ...
            status.num_users = model.retriever.num_users
            status.num_items = model.retriever.num_items
        return status
