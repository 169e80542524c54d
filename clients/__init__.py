"""Python client library (and ``movierec`` CLI) for the movierec gRPC services.

Why a package of its own: applications should talk to the recommender in
domain terms (``rc.recommend("42", k=10)``) with typed results and catchable
exceptions, without importing grpc or the generated protobuf modules, and
without pulling in the servers' TensorFlow dependencies.

    from clients import Filter, RecommenderClient, TrainerClient, NotFound

    with RecommenderClient("localhost:50052") as rc:
        rc.wait_until_serving(timeout=60)
        recs = rc.recommend("42", k=10)
        comedies = rc.recommend("42", k=10, filter=Filter(genres_any=["Comedy"], min_year=1990))

Several recommender replicas: ``RecommenderClient("h1:50052,h2:50052")`` or
``RecommenderClient("dns:///recommenders:50052")`` balances round robin over
the healthy ones (see ``clients.targets``).
"""

from .client import DEFAULT_TIMEOUT, RecommenderClient, TrainerClient
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    ConfigurationError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MovieRecError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from .types import (
    HYPERPARAMETERS,
    JOB_STATES,
    TERMINAL_STATES,
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
    UserRecommendations,
    Versions,
)

__all__ = [
    "RecommenderClient",
    "TrainerClient",
    "DEFAULT_TIMEOUT",
    # requests
    "Filter",
    # results
    "Item",
    "GenreCount",
    "Recommendations",
    "UserRecommendations",
    "BatchRecommendations",
    "SimilarItems",
    "ModelStatus",
    "ModelVersionInfo",
    "Versions",
    "PublishedVersion",
    "OnlineHits",
    "InteractionsUsed",
    "Pin",
    "HiddenMovies",
    "Job",
    "Progress",
    "JOB_STATES",
    "TERMINAL_STATES",
    "HYPERPARAMETERS",
    # errors
    "MovieRecError",
    "InvalidArgument",
    "NotFound",
    "Unavailable",
    "ResourceExhausted",
    "Unauthenticated",
    "PermissionDenied",
    "DeadlineExceeded",
    "Cancelled",
    "FailedPrecondition",
    "AlreadyExists",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "DataLoss",
    "ConfigurationError",
    "Interaction",
    "Recorded",
]
