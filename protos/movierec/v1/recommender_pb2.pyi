import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "exclude_seen", "recent_movie_ids", "filter")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    RECENT_MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    exclude_seen: bool
    recent_movie_ids: _containers.RepeatedScalarFieldContainer[int]
    filter: Filter
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., exclude_seen: _Optional[bool] = ..., recent_movie_ids: _Optional[_Iterable[int]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("exclude_movie_ids", "only_movie_ids", "genres_any", "genres_all", "exclude_genres", "min_year", "max_year")
    EXCLUDE_MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    ONLY_MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    GENRES_ANY_FIELD_NUMBER: _ClassVar[int]
    GENRES_ALL_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_GENRES_FIELD_NUMBER: _ClassVar[int]
    MIN_YEAR_FIELD_NUMBER: _ClassVar[int]
    MAX_YEAR_FIELD_NUMBER: _ClassVar[int]
    exclude_movie_ids: _containers.RepeatedScalarFieldContainer[int]
    only_movie_ids: _containers.RepeatedScalarFieldContainer[int]
    genres_any: _containers.RepeatedScalarFieldContainer[str]
    genres_all: _containers.RepeatedScalarFieldContainer[str]
    exclude_genres: _containers.RepeatedScalarFieldContainer[str]
    min_year: int
    max_year: int
    def __init__(self, exclude_movie_ids: _Optional[_Iterable[int]] = ..., only_movie_ids: _Optional[_Iterable[int]] = ..., genres_any: _Optional[_Iterable[str]] = ..., genres_all: _Optional[_Iterable[str]] = ..., exclude_genres: _Optional[_Iterable[str]] = ..., min_year: _Optional[int] = ..., max_year: _Optional[int] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("movie_id", "title", "score", "genres", "year")
    MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    YEAR_FIELD_NUMBER: _ClassVar[int]
    movie_id: int
    title: str
    score: float
    genres: _containers.RepeatedScalarFieldContainer[str]
    year: int
    def __init__(self, movie_id: _Optional[int] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., genres: _Optional[_Iterable[str]] = ..., year: _Optional[int] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "cold_start", "unknown_movie_ids", "eligible_movies", "recommendation_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_MOVIES_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: int
    cold_start: bool
    unknown_movie_ids: _containers.RepeatedScalarFieldContainer[int]
    eligible_movies: int
    recommendation_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[int] = ..., cold_start: _Optional[bool] = ..., unknown_movie_ids: _Optional[_Iterable[int]] = ..., eligible_movies: _Optional[int] = ..., recommendation_id: _Optional[str] = ...) -> None: ...

class RecommendBatchRequest(_message.Message):
    __slots__ = ("user_ids", "k", "exclude_seen", "filter")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    exclude_seen: bool
    filter: Filter
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., exclude_seen: _Optional[bool] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class UserRecommendations(_message.Message):
    __slots__ = ("user_id", "items", "cold_start", "eligible_movies", "recommendation_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_MOVIES_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    cold_start: bool
    eligible_movies: int
    recommendation_id: str
    def __init__(self, user_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., cold_start: _Optional[bool] = ..., eligible_movies: _Optional[int] = ..., recommendation_id: _Optional[str] = ...) -> None: ...

class RecommendBatchResponse(_message.Message):
    __slots__ = ("results", "model_version", "unknown_movie_ids")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UserRecommendations]
    model_version: int
    unknown_movie_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, results: _Optional[_Iterable[_Union[UserRecommendations, _Mapping]]] = ..., model_version: _Optional[int] = ..., unknown_movie_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("movie_id", "k", "filter")
    MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    movie_id: int
    k: int
    filter: Filter
    def __init__(self, movie_id: _Optional[int] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("movie", "items", "model_version", "unknown_movie_ids", "eligible_movies")
    MOVIE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_MOVIES_FIELD_NUMBER: _ClassVar[int]
    movie: RecommendedItem
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: int
    unknown_movie_ids: _containers.RepeatedScalarFieldContainer[int]
    eligible_movies: int
    def __init__(self, movie: _Optional[_Union[RecommendedItem, _Mapping]] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[int] = ..., unknown_movie_ids: _Optional[_Iterable[int]] = ..., eligible_movies: _Optional[int] = ...) -> None: ...

class GetModelStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "state", "reason", "model_kind", "metrics")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[ModelVersion.State]
        SERVING: _ClassVar[ModelVersion.State]
        AVAILABLE: _ClassVar[ModelVersion.State]
        LOADING: _ClassVar[ModelVersion.State]
        REJECTED: _ClassVar[ModelVersion.State]
        RETIRED: _ClassVar[ModelVersion.State]
    STATE_UNSPECIFIED: ModelVersion.State
    SERVING: ModelVersion.State
    AVAILABLE: ModelVersion.State
    LOADING: ModelVersion.State
    REJECTED: ModelVersion.State
    RETIRED: ModelVersion.State
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: ModelVersion.State
    reason: str
    model_kind: str
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, version: _Optional[int] = ..., state: _Optional[_Union[ModelVersion.State, str]] = ..., reason: _Optional[str] = ..., model_kind: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("served_version", "model_kind", "loaded_at", "model_root", "pinned_version", "versions", "metrics", "num_users", "num_items", "pin_source", "pin_problem", "genres", "hidden_movies", "hidden_sequence", "hidden_problem", "events_store", "events_followed", "fresh_interactions", "fresh_users", "events_problem", "online_judged", "online_hit_rate")
    class PinSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PIN_SOURCE_UNSPECIFIED: _ClassVar[ModelStatus.PinSource]
        VERSION_FLAG: _ClassVar[ModelStatus.PinSource]
        MODEL_ROOT: _ClassVar[ModelStatus.PinSource]
    PIN_SOURCE_UNSPECIFIED: ModelStatus.PinSource
    VERSION_FLAG: ModelStatus.PinSource
    MODEL_ROOT: ModelStatus.PinSource
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ROOT_FIELD_NUMBER: _ClassVar[int]
    PINNED_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NUM_USERS_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PIN_SOURCE_FIELD_NUMBER: _ClassVar[int]
    PIN_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_MOVIES_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    EVENTS_STORE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FOLLOWED_FIELD_NUMBER: _ClassVar[int]
    FRESH_INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    FRESH_USERS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    ONLINE_JUDGED_FIELD_NUMBER: _ClassVar[int]
    ONLINE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    served_version: int
    model_kind: str
    loaded_at: _timestamp_pb2.Timestamp
    model_root: str
    pinned_version: int
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    metrics: _containers.ScalarMap[str, float]
    num_users: int
    num_items: int
    pin_source: ModelStatus.PinSource
    pin_problem: str
    genres: _containers.RepeatedCompositeFieldContainer[GenreCount]
    hidden_movies: int
    hidden_sequence: int
    hidden_problem: str
    events_store: str
    events_followed: int
    fresh_interactions: int
    fresh_users: int
    events_problem: str
    online_judged: int
    online_hit_rate: float
    def __init__(self, served_version: _Optional[int] = ..., model_kind: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_root: _Optional[str] = ..., pinned_version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., num_users: _Optional[int] = ..., num_items: _Optional[int] = ..., pin_source: _Optional[_Union[ModelStatus.PinSource, str]] = ..., pin_problem: _Optional[str] = ..., genres: _Optional[_Iterable[_Union[GenreCount, _Mapping]]] = ..., hidden_movies: _Optional[int] = ..., hidden_sequence: _Optional[int] = ..., hidden_problem: _Optional[str] = ..., events_store: _Optional[str] = ..., events_followed: _Optional[int] = ..., fresh_interactions: _Optional[int] = ..., fresh_users: _Optional[int] = ..., events_problem: _Optional[str] = ..., online_judged: _Optional[int] = ..., online_hit_rate: _Optional[float] = ...) -> None: ...

class GenreCount(_message.Message):
    __slots__ = ("name", "movies")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MOVIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    movies: int
    def __init__(self, name: _Optional[str] = ..., movies: _Optional[int] = ...) -> None: ...

class Interaction(_message.Message):
    __slots__ = ("event_id", "user_id", "movie_id", "rating", "occurred_at", "recommendation_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    movie_id: int
    rating: float
    occurred_at: _timestamp_pb2.Timestamp
    recommendation_id: str
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., movie_id: _Optional[int] = ..., rating: _Optional[float] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recommendation_id: _Optional[str] = ...) -> None: ...

class RecordInteractionsRequest(_message.Message):
    __slots__ = ("interactions",)
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    interactions: _containers.RepeatedCompositeFieldContainer[Interaction]
    def __init__(self, interactions: _Optional[_Iterable[_Union[Interaction, _Mapping]]] = ...) -> None: ...

class RecordInteractionsResponse(_message.Message):
    __slots__ = ("stored", "duplicates", "unknown_movie_ids", "watermark")
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    stored: int
    duplicates: int
    unknown_movie_ids: _containers.RepeatedScalarFieldContainer[int]
    watermark: int
    def __init__(self, stored: _Optional[int] = ..., duplicates: _Optional[int] = ..., unknown_movie_ids: _Optional[_Iterable[int]] = ..., watermark: _Optional[int] = ...) -> None: ...
