"""The Recommender gRPC servicer: request checks, proto translation, status codes."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from movierec.v1 import recommender_pb2, recommender_pb2_grpc
from movierec_common import metrics as prometheus_metrics
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
_PIN_SOURCE = recommender_pb2.ModelStatus.PinSource


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


def _recommend_response(model: LoadedModel, result: Recommendation) -> recommender_pb2.RecommendResponse:
    return recommender_pb2.RecommendResponse(items=_items(result.items), model_version=model.version,
                                             cold_start=result.cold_start, unknown_movie_ids=result.unknown_movie_ids)


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self, registry: ModelRegistry):
        self._registry = registry

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
        if request.recent_movie_ids:
            prometheus_metrics.session_request()
        try:  # the model keeps the answers it gives without a session (recommender_service.answers)
            return model.recommend(request.user_id, request.k, _exclude_seen(request), _recommend_response,
                                   request.recent_movie_ids)
        except SessionsUnsupported:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"model version {model.version} was published before sessions were supported; "
                          f"retrain to answer recent_movie_ids")

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
            pin_source=_PIN_SOURCE.Value(self._registry.pin_source or "PIN_SOURCE_UNSPECIFIED"),
            pin_problem=self._registry.pin_problem,
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
            status.metrics.update(model.metadata.metrics)
            status.metrics.update(model.serving)  # serving_ann, serving_ann_nprobe, serving_smoke_recall_at_10, ...
            status.num_users = model.retriever.num_users
            status.num_items = model.retriever.num_items
        return status
