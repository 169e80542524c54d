"""Fuzzing every RPC of both services with hypothesis-generated requests.

For each RPC at least 1,000 generated requests go to a real server process on
loopback (one server per service, requests generated in this process):
well-formed messages with hostile field values (unicode, NUL, 10 KB strings,
int32/int64 extremes, nan/inf, long repeated fields, optional fields set and
unset) and a share of malformed protobuf bytes. The count is asserted per RPC,
and every RPC of both services must have its fuzz here (a new RPC without one
fails ``test_every_rpc_is_fuzzed``).

Every call is judged against an oracle written in this module, not taken
from the servers' code: each request has exactly one expected status code
(INVALID_ARGUMENT for each documented bound, escaping path or malformed
message; OK, NOT_FOUND or ALREADY_EXISTS where the contract says so), and
every OK answer is checked for content: the movies a recommender returns
against a brute force over the same artifact (inner products, cosine
similarities, popularity, the session's pooled query), a job against the
request that made it. The only answers left open are the ones the test cannot
know in advance: RESOURCE_EXHAUSTED when the trainer's queue happens to be
full, and DEADLINE_EXCEEDED for the one call in 25 sent with a deadline that
has passed on purpose.

The status-code histogram per RPC is printed at the end of the module (run
with ``-s`` to see it). ``MOVIEREC_FUZZ_CASES`` lowers the case count for a
quick local run (not under CI); CI uses the default 1,000 (derandomized, so
reproducible).

Three server bugs this fuzz found are pinned by the regression tests at the
end of the module: malformed request bytes must be INVALID_ARGUMENT (grpcio
alone says INTERNAL), dataset paths the OS cannot open (NUL, over-long names,
symlink loops) must be INVALID_ARGUMENT, and Train's error messages must stay
small whatever the caller sent.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import time
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients import RecommenderClient
from movierec.v1 import recommender_pb2, trainer_pb2
from movierec_common import movie_metadata
from movierec_common.artifact import VersionMetadata
from movierec_common.event_store import open_store
from movierec_common.session_query import POOLED, Part, QueryEncoder
from tests.artifacts import tiny_artifact
from tests.datagen import write_grouplens_files
from tests.servers import start_recommender, start_trainer
from trainer_service.publisher import publish

CASES = int(os.environ.get("MOVIEREC_FUZZ_CASES", "1000"))
MIN_CASES = 1000  # per RPC, under CI
DEADLINE = 10.0        # every call; a DEADLINE_EXCEEDED here is a hang
TINY_DEADLINE = 1e-4   # on purpose: DEADLINE_EXCEEDED is then allowed
WATCH_DEADLINE = 5.0
WATCH_MAX_MESSAGES = 3

Code = grpc.StatusCode
SERVICES = {
    "movierec.v1.Recommender": recommender_pb2.DESCRIPTOR.services_by_name["Recommender"],
    "movierec.v1.Trainer": trainer_pb2.DESCRIPTOR.services_by_name["Trainer"],
}
# README's status-code table.
DOCUMENTED = frozenset({
    Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED,
    Code.ALREADY_EXISTS, Code.DEADLINE_EXCEEDED,
})
# What each RPC can legitimately answer here (a model is served, the trainer is up).
EXPECTED = {
    "Train": {Code.OK, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED, Code.ALREADY_EXISTS},
    "GetJob": {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND},
    "ListJobs": {Code.OK, Code.INVALID_ARGUMENT},
    "WatchJob": {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND},
    "CancelJob": {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND},
    "ListVersions": {Code.OK, Code.INVALID_ARGUMENT},
    "PinVersion": {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND},
    "HideMovies": {Code.OK, Code.INVALID_ARGUMENT},
    "UnhideMovies": {Code.OK, Code.INVALID_ARGUMENT},
    "ListHiddenMovies": {Code.OK, Code.INVALID_ARGUMENT},
    "Recommend": {Code.OK, Code.INVALID_ARGUMENT},
    "RecommendBatch": {Code.OK, Code.INVALID_ARGUMENT},
    "SimilarItems": {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND},
    "GetModelStatus": {Code.OK, Code.INVALID_ARGUMENT},
    "RecordInteractions": {Code.OK, Code.INVALID_ARGUMENT, Code.ALREADY_EXISTS},
}
assert all(codes <= DOCUMENTED for codes in EXPECTED.values())

# Both servers refuse requests over 4 MiB (movierec_common.grpc_server.MAX_RECEIVE_BYTES) with gRPC's own
# RESOURCE_EXHAUSTED "Received message larger than max"; only a RecommendBatch of ~1,000 long user ids gets there.
MAX_RECEIVE_BYTES = 4 * 1024 * 1024

FUZZ_SETTINGS = settings(
    max_examples=CASES,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)

HISTOGRAM: dict[str, Counter] = defaultdict(Counter)
TIMINGS: dict[str, float] = {}

# -- The contract, as the README and the .proto comments state it (written out, not imported, so that a
# server drifting from it fails here).

MAX_K = 1000
MAX_RECENT_MOVIES = 1000  # recent_movie_ids per Recommend
MAX_EXCLUDE_MOVIE_IDS = 10_000  # Filter.exclude_movie_ids
MAX_ONLY_MOVIE_IDS = 100_000    # Filter.only_movie_ids
MAX_FILTER_GENRES = 64          # names per genre list of a Filter
MAX_YEAR = 9999
MAX_HIDE_IDS = 10_000           # ids per HideMovies / UnhideMovies
MAX_INTERACTIONS = 1000         # per RecordInteractions
MAX_EVENT_ID_BYTES = 128
MAX_FUTURE_SECONDS = 24 * 3600  # occurred_at ahead of the server's clock
MAX_USER_ID_BYTES = 256
MAX_BATCH_USERS = 1000
MAX_BATCH_ITEMS = 100_000   # users x k per RecommendBatch
MAX_JOB_ID = 128
MAX_KEY = 128               # idempotency_key characters
MAX_PATH = 1024             # dataset path characters
MAX_NAME = 64               # model, holdout characters
MAX_LIST_LIMIT = 1000
MAX_HOLDOUT_SIZE = 100
DEFAULT_HOLDOUT, DEFAULT_HOLDOUT_SIZE = "random", 10
TRAINER_WORKERS = 1         # the fuzzed trainer's --workers (the default)
QUEUE_SIZE = 2              # the fuzzed trainer's --queue-size: jobs that may wait behind the running one
MODEL_KINDS = ("two_tower", "two_tower_dropout", "bpr", "ease", "dlae", "ease_blend", "sequential")
PREDEFINED_SPLITS = ("ua", "ub", "u1", "u2", "u3", "u4", "u5")  # MovieLens 100K's own files only
HOLDOUT_NAMES = ("random", "last_n_per_user", *PREDEFINED_SPLITS)
# Each hyperparameter's accepted range, inclusive, and whether it must be whole; 0 means "not set".
HYPERPARAMETER_RANGES = {
    "embedding_dim": (1, 512, int), "hidden_dim": (1, 2048, int), "batch_size": (16, 8192, int),
    "learning_rate": (1e-6, 1.0, float), "dropout_rate": (0.0, 0.9, float), "num_negatives": (1, 64, int),
    "weight_decay": (0.0, 1.0, float), "temperature": (0.01, 10.0, float), "patience": (1, 200, int),
    "validation_size": (1, 50, int), "l2_lambda": (0.01, 1e6, float), "blend_weight": (0.0, 1.0, float),
}
EPOCHS_RANGE = (1, 200)

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)

# --------------------------------------------------------------------------- the served model

ARTIFACT = tiny_artifact()
MOVIE_IDS = [int(m) for m in ARTIFACT.movie_ids.tolist()]
USER_IDS = [str(u) for u in ARTIFACT.user_ids.tolist()]
USER_INDEX = {user: n for n, user in enumerate(USER_IDS)}
MOVIE_INDEX = {movie: n for n, movie in enumerate(MOVIE_IDS)}
SEEN = {user: [int(i) for i in ARTIFACT.seen_items(n).tolist()] for n, user in enumerate(USER_IDS)}
TITLES = dict(zip(MOVIE_IDS, ARTIFACT.titles.tolist(), strict=True))
ITEMS = ARTIFACT.item_vectors.astype(np.float64)
SCORES = ARTIFACT.user_vectors.astype(np.float64) @ ITEMS.T           # [user, movie] inner products
_NORMS = np.linalg.norm(ITEMS, axis=1)
COSINE = (ITEMS @ ITEMS.T) / np.outer(_NORMS, _NORMS)                 # [movie, movie]
POPULAR = sorted(range(len(MOVIE_IDS)), key=lambda i: (-float(ARTIFACT.popularity[i]), i))
POPULAR_SHARE = ARTIFACT.popularity.astype(np.float64) / ARTIFACT.popularity.sum()
# The served version's movie metadata: genre names (bit g of a mask is GENRES[g]) and years, 0 = unknown.
GENRES = ("Action", "Comedy", "Drama", "Film-Noir")
_FACTS_RNG = np.random.default_rng(17)
GENRE_BITS = _FACTS_RNG.integers(0, 1 << len(GENRES), size=len(MOVIE_IDS)).astype(np.uint64)
YEARS = np.where(_FACTS_RNG.random(len(MOVIE_IDS)) < 0.2, 0, _FACTS_RNG.integers(1985, 2000, size=len(MOVIE_IDS)))
MOVIE_GENRES = [{name for g, name in enumerate(GENRES) if int(bits) >> g & 1} for bits in GENRE_BITS.tolist()]

# --------------------------------------------------------------------------- strategies

SAFE_CHARS = st.characters(blacklist_categories=("Cs",))  # protobuf strings cannot hold lone surrogates
HOSTILE_STRINGS = [
    "", " ", "  \t\n", "\x00", "a\x00b", "\x00" * 300, "0", "-1", "1 ", " 1", "01", "1.0", "1e3", "é",
    "Misérables, Les (1995)", "\u202e\u202d", "\ufeff", "\u200b", "💥" * 70, "𝓤𝓷𝓲𝓬𝓸𝓭𝓮", "%s%n%x",
    "../../etc/passwd", "/etc/passwd", "C:\\Windows\\win.ini", "${jndi:ldap://x}", "' OR 1=1 --", "null",
    "None", "NaN", "\n" * 50, "\\", "\r\n\r\n", "a" * 128, "a" * 129, "a" * 256, "a" * 257, "é" * 128,
    "é" * 129,
]


def huge_text() -> st.SearchStrategy[str]:
    """Up to ~10 KB, built from a short piece so hypothesis need not draw every character."""
    return st.builds(lambda piece, n: (piece * (n // len(piece) + 1))[:n],
                     st.text(SAFE_CHARS, min_size=1, max_size=6), st.integers(100, 10_000))


def texts(*interesting: str) -> st.SearchStrategy[str]:
    near_misses = st.builds(lambda base, affix, front: affix + base if front else base + affix,
                            st.sampled_from(list(interesting) or ["x"]),
                            st.sampled_from(["\x00", " ", "\n", "x", "é", "/", ".", "0"]), st.booleans())
    return st.one_of(
        st.text(SAFE_CHARS, max_size=24),
        st.sampled_from(HOSTILE_STRINGS),
        huge_text(),
        *([st.sampled_from(list(interesting)), near_misses] if interesting else []),
    )


def ints(low: int, high: int, *interesting: int) -> st.SearchStrategy[int]:
    edges = [v for v in (low, high, low + 1, high - 1, 0, 1, -1, 2) if low <= v <= high]
    return st.one_of(
        st.integers(low, high),
        st.sampled_from(sorted(set(edges) | {v for v in interesting if low <= v <= high})),
        st.integers(max(low, -5), min(high, 1_100)),
    )


def int32s(*interesting: int) -> st.SearchStrategy[int]:
    return ints(*INT32, *interesting)


def int64s(*interesting: int) -> st.SearchStrategy[int]:
    return ints(*INT64, *interesting)


def doubles(*interesting: float) -> st.SearchStrategy[float]:
    return st.one_of(
        st.floats(),
        st.sampled_from([0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf, 5e-324, 1e-300, 1e300,
                         1e-7, 0.5, 1.0, 1.0000001, -1.0, *interesting]),
        st.floats(-2.0, 2.0),
    )


def optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


def deadlines() -> st.SearchStrategy[float]:
    # One call in 25 with a deadline that has passed by the time the server looks at it.
    return st.sampled_from([DEADLINE] * 24 + [TINY_DEADLINE])


def mutated(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Malformed protobuf: random bytes, damaged valid encodings, and classic wire-format traps."""

    @st.composite
    def damage(draw) -> bytes:
        data = bytearray(draw(valid))
        for _ in range(draw(st.integers(1, 4))):
            how = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
            where = draw(st.integers(0, max(0, len(data))))
            if how == "flip" and data:
                data[min(where, len(data) - 1)] ^= draw(st.integers(1, 255))
            elif how == "truncate":
                del data[where:]
            elif how == "insert":
                data[where:where] = draw(st.binary(min_size=1, max_size=8))
            elif data:
                del data[min(where, len(data) - 1)]
        return bytes(data)

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    traps = st.sampled_from([
        b"\x0a\x02\xff\xfe",                      # field 1 (string) with invalid UTF-8
        b"\x0a\x03\xed\xa0\x80",                  # UTF-8-encoded surrogate
        b"\x0a\xff\xff\xff\xff\x0f",              # length far beyond the buffer
        b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # over-long varint length
        b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",      # unterminated varint
        b"\x10" + varint(2**64 - 1),              # int32 field with a 64-bit value (valid, truncates)
        b"\x0b" * 200,                            # unterminated start-groups
        b"\x0c",                                  # end-group without start
        b"\x0f\x00",                              # wire type 7 does not exist
        b"\x00\x00",                              # field number 0
        b"\xf8\xff\xff\xff\x0f\x01",              # field number 2**29-1 (valid, unknown)
        b"\x1a" + varint(5) + b"\x0a\x03abc",     # sub-message where a scalar is expected
        b"\x12\x02\x0a\x05",                      # nested length beyond its parent
        b"\x1d" + struct.pack("<f", math.nan),     # fixed32 in field 3
        (b"\x1a\x02" * 120) + b"\x08\x01",        # deep nesting
        b"\x08\x01" * 5000,                       # a repeated scalar 5000 times (last wins)
    ])
    return st.one_of(st.binary(max_size=64), damage(), traps,
                     st.builds(lambda a, b: a + b, valid, st.binary(min_size=1, max_size=16)))


class Payload(tuple):
    """(message or None, request bytes), with a repr short enough to read in a failure report."""

    def __repr__(self) -> str:
        message, data = self
        shown = repr(data[:300]) if message is None else f"{type(message).__name__}({str(message)[:600]!r})"
        return f"<{len(data)} bytes: {shown}>"


def payloads(messages: st.SearchStrategy) -> st.SearchStrategy[Payload]:
    """(message, its bytes) for 7 in 8 cases; (None, malformed-or-odd bytes) otherwise."""
    encoded = messages.map(lambda m: m.SerializeToString())

    @st.composite
    def pick(draw) -> Payload:
        if draw(st.sampled_from([True] * 7 + [False])):
            message = draw(messages)
            return Payload((message, message.SerializeToString()))
        return Payload((None, draw(mutated(encoded))))

    return pick()


# -- Recommender messages

user_ids = texts(*USER_IDS, "9999", "0")
ks = int32s(MAX_K, MAX_K + 1, len(MOVIE_IDS), len(MOVIE_IDS) + 1)


movie_id_values = int64s(*MOVIE_IDS[:3], 0, -1, max(MOVIE_IDS) + 1)


@st.composite
def recent_movie_lists(draw) -> list[int]:
    """Mostly none; else a few known and unknown ids, repeats, or lists around the 1,000 limit."""
    size = draw(st.sampled_from([0] * 6 + [1, 3, 10, 999, 1000, 1001, 1500]))
    if size == 0:
        return []
    style = draw(st.sampled_from(["known", "mixed", "unknown"]))
    pool = {"known": st.sampled_from(MOVIE_IDS), "mixed": st.one_of(st.sampled_from(MOVIE_IDS), movie_id_values),
            "unknown": movie_id_values}[style]
    head = draw(st.lists(pool, min_size=1, max_size=min(size, 12)))
    return [head[i % len(head)] for i in range(size)]


@st.composite
def movie_id_lists(draw, limit: int) -> list[int]:
    """Mostly a few known and unknown ids; sometimes lists at and past ``limit``."""
    size = draw(st.sampled_from([0, 0, 1, 2, 5, 12, 25, limit, limit + 1]))
    if size == 0:
        return []
    head = draw(st.lists(st.one_of(st.sampled_from(MOVIE_IDS), movie_id_values), min_size=1, max_size=min(size, 12)))
    return [head[i % len(head)] for i in range(size)]


genre_names = st.one_of(st.sampled_from(GENRES), st.sampled_from(["", "Musical", "action", "Drama ", "\x00"]),
                        texts())


@st.composite
def filters(draw) -> recommender_pb2.Filter | None:
    """Mostly no filter; else a mix of conditions, valid and hostile (unknown genres, years out of range)."""
    if draw(st.integers(0, 2)) == 0:
        return None
    f = recommender_pb2.Filter(exclude_movie_ids=draw(movie_id_lists(MAX_EXCLUDE_MOVIE_IDS)),
                               only_movie_ids=draw(movie_id_lists(MAX_ONLY_MOVIE_IDS)))
    for name in ("genres_any", "genres_all", "exclude_genres"):
        count = draw(st.sampled_from([0, 0, 0, 1, 2, MAX_FILTER_GENRES + 1]))
        if count == 0:
            continue
        names = draw(st.lists(st.one_of(st.sampled_from(GENRES), genre_names), min_size=1, max_size=min(count, 3)))
        getattr(f, name).extend(names[i % len(names)] for i in range(count))
    f.min_year = draw(st.one_of(st.just(0), st.integers(1980, 2005), int32s(MAX_YEAR, MAX_YEAR + 1)))
    f.max_year = draw(st.one_of(st.just(0), st.integers(1980, 2005), int32s(MAX_YEAR, MAX_YEAR + 1)))
    return f


def with_filter(request, f: recommender_pb2.Filter | None):
    if f is not None:
        request.filter.CopyFrom(f)
    return request


@st.composite
def recommend_requests(draw):
    request = recommender_pb2.RecommendRequest(user_id=draw(user_ids), k=draw(ks),
                                               recent_movie_ids=draw(recent_movie_lists()))
    exclude = draw(optional(st.booleans()))
    if exclude is not None:
        request.exclude_seen = exclude
    return with_filter(request, draw(filters()))


@st.composite
def user_id_lists(draw) -> list[str]:
    size = draw(st.one_of(st.integers(0, 8), st.sampled_from([0, 1, 999, 1000, 1001, 1200]),
                          st.integers(0, 1200)))
    pool = draw(st.lists(user_ids, min_size=1, max_size=4))
    style = draw(st.sampled_from(["pool", "known", "numbered", "one_bad"]))
    if style == "pool":
        return [pool[i % len(pool)] for i in range(size)]
    if style == "known":
        return [USER_IDS[i % len(USER_IDS)] for i in range(size)]
    if style == "numbered":
        return [f"{pool[0][:32]}{i}" for i in range(size)]
    users = [USER_IDS[i % len(USER_IDS)] for i in range(size)]
    if users:
        users[draw(st.integers(0, size - 1))] = draw(st.sampled_from(["", " ", "x" * 257, "é" * 129]))
    return users


@st.composite
def recommend_batch_requests(draw):
    request = recommender_pb2.RecommendBatchRequest(user_ids=draw(user_id_lists()), k=draw(ks))
    exclude = draw(optional(st.booleans()))
    if exclude is not None:
        request.exclude_seen = exclude
    return with_filter(request, draw(filters()))


similar_items_requests = st.builds(
    with_filter,
    st.builds(recommender_pb2.SimilarItemsRequest,
              movie_id=st.one_of(int64s(*MOVIE_IDS, MOVIE_IDS[0] - 1, MOVIE_IDS[-1] + 1), st.sampled_from(MOVIE_IDS)),
              k=ks),
    filters(),
)
model_status_requests = st.just(recommender_pb2.GetModelStatusRequest())

# -- Trainer messages

DATA_PATHS = [
    "ratings.data", "items.item", "bad.data", "empty.data", "binary.data", "escape.data", "sub", "sub/",
    "sub/../ratings.data", "./ratings.data", "../ratings.data", "nonexistent.data", "ratings.data\x00",
    "ratings.data/", "/etc/passwd", "~/ratings.data", "file:///etc/passwd", "gs://bucket/ratings.data",
    "a" * 1024, "a" * 1025, "x" * 256, "é" * 128, "loop", "loop/ratings.data",
]
HOLDOUTS = ["", "random", "last_n_per_user", "ua", "ub", "u1", "u5", "u6", "RANDOM"]

hyperparameter_values = {
    "embedding_dim": int32s(512, 513), "batch_size": int32s(15, 16, 8192, 8193),
    "learning_rate": doubles(1e-6, 9e-7), "dropout_rate": doubles(0.9, 0.91),
    "num_negatives": int32s(64, 65), "weight_decay": doubles(), "temperature": doubles(0.01, 10.0),
    "patience": int32s(200, 201), "validation_size": int32s(50, 51), "hidden_dim": int32s(2048, 2049),
    "l2_lambda": doubles(0.01, 1e6), "blend_weight": doubles(),
}

# A few keys reused across cases, so that the same key meets different requests.
IDEMPOTENCY_KEYS = ["fuzz-key-1", "fuzz-key-2", "fuzz-key-3"]


# Valid-but-small values: a request hostile in only one part gets past the checks before it.
small_hyperparameters = {
    "embedding_dim": st.integers(1, 8), "batch_size": st.integers(16, 64), "learning_rate": st.floats(1e-4, 0.1),
    "dropout_rate": st.floats(0.0, 0.5), "num_negatives": st.integers(1, 4), "weight_decay": st.floats(0.0, 0.1),
    "temperature": st.floats(0.1, 2.0), "patience": st.integers(1, 3), "validation_size": st.integers(1, 2),
    "hidden_dim": st.integers(1, 16), "l2_lambda": st.floats(1.0, 1000.0), "blend_weight": st.floats(0.0, 1.0),
}
TRAIN_PARTS = ("model", "epochs", "key", "dataset", "hyperparameters", "evaluation", "quality_gate",
               "workers")


@st.composite
def train_requests(draw):
    """Each part is hostile or valid; usually just one part is hostile (``focus``), sometimes all."""
    focus = draw(st.sampled_from([*TRAIN_PARTS, "all", "all"]))

    def hostile(part: str) -> bool:
        return focus in (part, "all")

    request = trainer_pb2.TrainRequest(
        model=draw(st.one_of(st.sampled_from(MODEL_KINDS), texts(*MODEL_KINDS)) if hostile("model")
                   else st.sampled_from(MODEL_KINDS)),
        epochs=draw(st.one_of(int32s(200, 201), st.integers(0, 2)) if hostile("epochs") else st.integers(0, 2)),
        seed=draw(ints(*UINT64)),
        idempotency_key=draw(st.one_of(st.just(""), st.sampled_from(IDEMPOTENCY_KEYS),
                                       *([texts()] if hostile("key") else []))),
    )
    if hostile("dataset") or draw(st.booleans()):
        if hostile("dataset"):
            paths = st.one_of(st.sampled_from(DATA_PATHS), texts())
            request.dataset.ratings_path = draw(st.one_of(st.just("ratings.data"), paths))
            request.dataset.items_path = draw(st.one_of(st.just("items.item"), paths, st.just("")))
        else:
            request.dataset.ratings_path, request.dataset.items_path = "ratings.data", "items.item"
    if hostile("hyperparameters") or draw(st.booleans()):
        values = hyperparameter_values if hostile("hyperparameters") else small_hyperparameters
        request.hyperparameters.CopyFrom(
            trainer_pb2.Hyperparameters(**draw(st.fixed_dictionaries({}, optional=values))))
    if hostile("evaluation"):
        request.evaluation.holdout = draw(st.one_of(st.sampled_from(HOLDOUTS), texts()))
        request.evaluation.holdout_size = draw(int32s(100, 101))
    elif draw(st.booleans()):
        request.evaluation.holdout = draw(st.sampled_from(["", "random", "last_n_per_user"]))
        request.evaluation.holdout_size = draw(st.integers(0, 3))
    if hostile("quality_gate"):
        request.quality_gate.min_validation_recall_at_10 = draw(doubles())
    elif draw(st.booleans()):
        request.quality_gate.min_validation_recall_at_10 = draw(st.sampled_from([0.0, 0.5, 1.0]))
    request.quality_gate.require_no_regression = draw(st.booleans())
    request.quality_gate.require_beating_baseline = draw(st.booleans())
    request.quality_gate.disabled = draw(st.booleans())
    if hostile("workers"):
        request.workers = draw(int32s(TRAINER_WORKERS, TRAINER_WORKERS + 1))
    return request


def job_ids(known: list[str]) -> st.SearchStrategy[str]:
    """Fuzzed ids plus, drawn lazily, ids of jobs that really exist (and near misses of them)."""
    real = st.integers(0, 10**6).map(lambda i: known[i % len(known)])
    near = st.builds(lambda job, affix: job + affix if affix != "-1" else job[:-1],
                     real, st.sampled_from(["\x00", " ", "x", "-1", "/", "é"]))
    return st.one_of(real, near, texts("job-", "job-000000000000"))



# --------------------------------------------------------------------------- calling


class Caller:
    """Raw stubs with identity serializers: the test controls the exact request bytes."""

    def __init__(self, channel: grpc.Channel, service: str):
        self._channel = channel
        self._service = service
        self._callables: dict[tuple[str, bool], object] = {}

    def _callable(self, method: str, response_type, streaming: bool):
        key = (method, streaming)
        if key not in self._callables:
            factory = self._channel.unary_stream if streaming else self._channel.unary_unary
            self._callables[key] = factory(f"/{self._service}/{method}", request_serializer=lambda b: b,
                                           response_deserializer=response_type.FromString)
        return self._callables[key]

    def unary(self, method: str, payload: bytes, response_type, timeout: float = DEADLINE):
        """(code, details, response or None, seconds)."""
        started = time.monotonic()
        try:
            response = self._callable(method, response_type, False)(payload, timeout=timeout)
            return Code.OK, "", response, time.monotonic() - started
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", None, time.monotonic() - started

    def stream(self, method: str, payload: bytes, response_type, timeout: float = WATCH_DEADLINE,
               max_messages: int = WATCH_MAX_MESSAGES):
        """(code, details, messages received, seconds); OK also when we stopped reading."""
        started = time.monotonic()
        call = self._callable(method, response_type, True)(payload, timeout=timeout)
        received = []
        try:
            for message in call:
                received.append(message)
                if len(received) >= max_messages:
                    call.cancel()
                    break
            return Code.OK, "", received, time.monotonic() - started
        except grpc.RpcError as exc:
            if exc.code() == Code.CANCELLED and len(received) >= max_messages:
                return Code.OK, "", received, time.monotonic() - started
            return exc.code(), exc.details() or "", received, time.monotonic() - started


# --------------------------------------------------------------------------- the oracle: expected codes


def user_id_problem(user_id: str) -> bool:
    """Refused: empty, whitespace only, or longer than 256 UTF-8 bytes."""
    return not user_id.strip() or len(user_id.encode("utf-8")) > MAX_USER_ID_BYTES


def filter_problem(request) -> bool:
    """Refused: a list over its limit, a genre the version does not have, a year outside 0..9999, an
    inverted range."""
    if not request.HasField("filter"):
        return False
    f = request.filter
    if len(f.exclude_movie_ids) > MAX_EXCLUDE_MOVIE_IDS or len(f.only_movie_ids) > MAX_ONLY_MOVIE_IDS:
        return True
    names = [*f.genres_any, *f.genres_all, *f.exclude_genres]
    if max(len(f.genres_any), len(f.genres_all), len(f.exclude_genres)) > MAX_FILTER_GENRES:
        return True
    if any(name not in GENRES for name in names):
        return True
    if not (0 <= f.min_year <= MAX_YEAR and 0 <= f.max_year <= MAX_YEAR):
        return True
    return bool(f.min_year and f.max_year and f.min_year > f.max_year)


def passing(request) -> np.ndarray:
    """bool per movie: passes the request's filter (all True without one), tested movie by movie."""
    allowed = np.ones(len(MOVIE_IDS), dtype=bool)
    if not request.HasField("filter"):
        return allowed
    f = request.filter
    excluded, only = set(f.exclude_movie_ids), set(f.only_movie_ids)
    for i, movie_id in enumerate(MOVIE_IDS):
        genres, year = MOVIE_GENRES[i], int(YEARS[i])
        ok = movie_id not in excluded and (not only or movie_id in only)
        ok = ok and (not f.genres_any or bool(genres & set(f.genres_any)))
        ok = ok and set(f.genres_all) <= genres and not genres & set(f.exclude_genres)
        if f.min_year or f.max_year:
            ok = ok and year > 0 and (not f.min_year or year >= f.min_year) and (not f.max_year or year <= f.max_year)
        allowed[i] = ok
    return allowed


def filter_unknown_ids(request) -> list[int]:
    """The filter's ids the version does not know: exclude_movie_ids' first, then only_movie_ids', each once."""
    if not request.HasField("filter"):
        return []
    ids = [*request.filter.exclude_movie_ids, *request.filter.only_movie_ids]
    return list(dict.fromkeys(m for m in ids if m not in MOVIE_INDEX))


def recommend_code(request: recommender_pb2.RecommendRequest):
    if (user_id_problem(request.user_id) or not 1 <= request.k <= MAX_K
            or len(request.recent_movie_ids) > MAX_RECENT_MOVIES or filter_problem(request)):
        return Code.INVALID_ARGUMENT
    return Code.OK


def batch_code(request: recommender_pb2.RecommendBatchRequest):
    users = list(request.user_ids)
    if (not users or len(users) > MAX_BATCH_USERS or any(user_id_problem(u) for u in users)
            or not 1 <= request.k <= MAX_K or len(users) * request.k > MAX_BATCH_ITEMS or filter_problem(request)):
        return Code.INVALID_ARGUMENT
    return Code.OK


def similar_code(request: recommender_pb2.SimilarItemsRequest):
    if not 1 <= request.k <= MAX_K or filter_problem(request):  # checked first, also for an unknown movie
        return Code.INVALID_ARGUMENT
    return Code.OK if request.movie_id in MOVIE_INDEX else Code.NOT_FOUND


def path_problem(data_root: Path, relative: str) -> str:
    """Why a dataset path must be refused ("" when it names a file inside the data root)."""
    if not relative:
        return "empty"
    if relative.startswith("/"):
        return "absolute"
    if ".." in PurePosixPath(relative).parts:
        return "'..'"
    if "\x00" in relative:
        return "NUL"
    root = data_root.resolve()
    try:
        resolved = (root / relative).resolve()
        if not resolved.is_relative_to(root):
            return "leaves the data root"
        if not resolved.is_file():
            return "no such file"
    except (OSError, RuntimeError, ValueError) as exc:  # name too long, symlink loop
        return type(exc).__name__
    return ""


def train_problems(request: trainer_pb2.TrainRequest, data_root: Path) -> list[str]:
    """Everything wrong with a TrainRequest (its fields, as the README bounds them); [] when it is valid."""
    problems = []
    if len(request.idempotency_key) > MAX_KEY:
        problems.append("idempotency_key is longer")
    dataset = request.dataset
    for name in ("ratings_path", "items_path"):
        if len(getattr(dataset, name)) > MAX_PATH:
            problems.append(f"dataset.{name} is longer")
    if not request.model:
        problems.append("model is required")
    elif len(request.model) > MAX_NAME or request.model not in MODEL_KINDS:
        problems.append("model")
    if len(request.evaluation.holdout) > MAX_NAME:
        problems.append("holdout")
    for field, value in request.hyperparameters.ListFields():
        low, high, kind = HYPERPARAMETER_RANGES[field.name]
        if value == 0:
            continue  # not set
        if (not math.isfinite(value) or not low <= value <= high
                or (kind is int and float(value) != int(value))):
            problems.append(f"hyperparameter {field.name}=")
    if request.epochs and not EPOCHS_RANGE[0] <= request.epochs <= EPOCHS_RANGE[1]:
        problems.append("hyperparameter epochs=")
    holdout = request.evaluation.holdout or DEFAULT_HOLDOUT
    if len(request.evaluation.holdout) <= MAX_NAME and holdout not in HOLDOUT_NAMES:
        problems.append("holdout")
    if not 1 <= (request.evaluation.holdout_size or DEFAULT_HOLDOUT_SIZE) <= MAX_HOLDOUT_SIZE:
        problems.append("holdout_size must be between")
    if not 0.0 <= request.quality_gate.min_validation_recall_at_10 <= 1.0:  # nan too
        problems.append("min_validation_recall_at_10")
    if bool(dataset.ratings_path) != bool(dataset.items_path):
        problems.append("go together")
    elif dataset.ratings_path:
        if holdout in PREDEFINED_SPLITS:
            problems.append("MovieLens 100K split")
        for path in (dataset.ratings_path, dataset.items_path):
            if len(path) <= MAX_PATH and path_problem(data_root, path):
                problems.append(f"path {path[:40]!r}: {path_problem(data_root, path)}")
    if request.workers < 0 or request.workers > TRAINER_WORKERS:
        problems.append("workers")
    return problems


def train_spec(request: trainer_pb2.TrainRequest) -> tuple:
    """What makes two valid requests the same job (unset fields take their defaults)."""
    return (request.model, request.dataset.ratings_path, request.dataset.items_path, request.dataset.name,
            request.epochs, tuple(sorted((f.name, v) for f, v in request.hyperparameters.ListFields())),
            request.evaluation.holdout or DEFAULT_HOLDOUT, request.evaluation.holdout_size or DEFAULT_HOLDOUT_SIZE,
            request.evaluation.refit if request.evaluation.HasField("refit") else True, request.seed,
            request.idempotency_key, request.quality_gate.min_validation_recall_at_10,
            request.quality_gate.require_no_regression, request.quality_gate.require_beating_baseline,
            request.quality_gate.disabled, request.workers)


# --------------------------------------------------------------------------- the oracle: right answers


def ranking_problem(items, k: int, scores: np.ndarray, eligible: np.ndarray) -> str:
    """"" when ``items`` are the best min(k, eligible) movies by ``scores``, best first, each with its score.

    Scores are compared with a float tolerance (the server ranks in float32), so two movies whose scores
    agree to 1e-5 may come in either order; anything else must match the brute force exactly.
    """
    ids = [item.movie_id for item in items]
    unknown = [m for m in ids if m not in MOVIE_INDEX]
    if unknown:
        return f"movies the model does not know: {unknown}"
    if any(item.title != TITLES[item.movie_id] for item in items):
        return "a title does not belong to its movie"
    positions = np.array([MOVIE_INDEX[m] for m in ids], dtype=np.int64)
    want = min(k, int(eligible.sum()))
    if len(ids) != want:
        return f"{len(ids)} movies, expected {want}"
    if len(set(ids)) != len(ids):
        return f"a movie twice: {ids}"
    if want and not eligible[positions].all():
        return f"movies that must be excluded: {[m for m, p in zip(ids, positions, strict=True) if not eligible[p]]}"
    best = np.sort(scores[eligible])[::-1][:want]
    if not np.allclose(scores[positions], best, rtol=1e-5, atol=1e-6):
        order = sorted(np.flatnonzero(eligible), key=lambda i: (-scores[i], i))[:want]
        return f"served {ids}, the brute force ranks {[MOVIE_IDS[i] for i in order]}"
    served = np.array([item.score for item in items], dtype=np.float64)
    if not np.allclose(served, scores[positions], rtol=1e-4, atol=1e-5):
        return f"scores {served.tolist()} are not the movies' {scores[positions].tolist()}"
    return ""


def cold_start_problem(items, k: int, allowed: np.ndarray) -> str:
    """The popularity list of the movies that pass: most popular first, ties to the lower index, scored by
    share of interactions."""
    chosen = [i for i in POPULAR if allowed[i]][:k]
    expected = [MOVIE_IDS[i] for i in chosen]
    got = [item.movie_id for item in items]
    if got != expected:
        return f"cold start served {got}, popularity says {expected}"
    if not np.allclose([item.score for item in items], POPULAR_SHARE[chosen], rtol=1e-4, atol=1e-7):
        return "cold-start scores are not the popularity shares"
    return ""


def latest_occurrences(items: list[int]) -> list[int]:
    last = {item: position for position, item in enumerate(items)}
    return [item for position, item in enumerate(items) if last[item] == position]


def expected_answer(user_id: str, k: int, exclude_seen: bool, recent_ids=(),
                    allowed: np.ndarray | None = None) -> tuple[bool, object]:
    """(cold_start, a function judging the items) for one user's Recommend, sessions included.

    The session rule of the served version (QueryEncoder with one pooled part, no recency decay, no
    centring): a visitor's query is the mean of the known recent movies' vectors; a known user's is
    (1 - m) * their vector + m * that mean, where m is the recent movies' share of their whole
    history (each movie counted once). Seen and session movies are excluded when exclude_seen.
    """
    recent = latest_occurrences([MOVIE_INDEX[m] for m in recent_ids if m in MOVIE_INDEX])
    user = USER_INDEX.get(user_id)
    allowed = np.ones(len(MOVIE_IDS), dtype=bool) if allowed is None else allowed
    if user is None and not recent:
        return True, lambda items: cold_start_problem(items, k, allowed)
    eligible = allowed.copy()
    if exclude_seen:
        eligible[recent] = False
        if user is not None:
            eligible[SEEN[user_id]] = False
    if not recent:
        scores = SCORES[user]
    else:
        pooled = ITEMS[recent].mean(axis=0)
        if user is None:
            query = pooled
        else:
            share = len(recent) / len(set(SEEN[user_id]) | set(recent))
            query = (1 - share) * ARTIFACT.user_vectors[user].astype(np.float64) + share * pooled
        scores = ITEMS @ query
    return False, lambda items: ranking_problem(items, k, scores, eligible)


def similar_problem(movie_id: int, k: int, items, allowed: np.ndarray) -> str:
    index = MOVIE_INDEX[movie_id]
    eligible = allowed.copy()
    eligible[index] = False
    return ranking_problem(items, k, COSINE[index], eligible)


def parses(payload: bytes, request_type) -> bool:
    try:
        request_type.FromString(payload)
        return True
    except Exception:
        return False


def grpc_message_bytes(details: str) -> int:
    """Size of the ``grpc-message`` trailer gRPC sends for this status text (percent-encoded UTF-8)."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in details.encode("utf-8"))


# An error message must fit well inside gRPC's default 8 KiB metadata limit
# (grpc.max_metadata_size); beyond it the client gets RESOURCE_EXHAUSTED
# "received metadata size exceeds soft limit" instead of the real status.
MAX_MESSAGE_BYTES = 4096


def check_status(rpc: str, server, code, details: str, timeout: float, *, malformed: bool, size: int = 0) -> bool:
    """Common assertions; returns True when the call must be judged further (it was not a
    tolerated deadline, an oversized request or malformed bytes)."""
    assert server.alive(), \
        f"{rpc}: the server process died (exit code {server.process.returncode}); see {server.log_path}"
    oversized = size > MAX_RECEIVE_BYTES
    label = code.name + (" (malformed bytes)" if malformed else "") + (" (request over 4 MiB)" if oversized else "")
    HISTOGRAM[rpc][label] += 1
    if code == Code.DEADLINE_EXCEEDED:
        assert timeout == TINY_DEADLINE, f"{rpc}: no answer within the {timeout:g}s deadline (hang)"
        return False
    if oversized:
        assert code == Code.RESOURCE_EXHAUSTED and "larger than max" in details, (code, details)
        return False
    assert code in EXPECTED[rpc], f"{rpc}: undocumented status {code.name}: {details!r:.1000}"
    if code != Code.OK:
        assert details.strip(), f"{rpc}: {code.name} without a message"
        assert grpc_message_bytes(details) <= MAX_MESSAGE_BYTES, \
            f"{rpc}: a {grpc_message_bytes(details)}-byte error message: {details!r:.300}"
    if malformed:
        assert code == Code.INVALID_ARGUMENT, f"{rpc}: {code.name} for bytes that are not a request"
        return False
    return True


def run_fuzz(rpc: str, fuzz) -> None:
    """Runs a hypothesis fuzz and asserts how many cases reached the server."""
    started = time.monotonic()
    fuzz()
    TIMINGS[rpc] = time.monotonic() - started
    cases = sum(HISTOGRAM[rpc].values())
    assert cases >= CASES, f"{rpc}: only {cases} of {CASES} cases were sent"
    if os.environ.get("CI", "").lower() == "true":
        assert cases >= MIN_CASES, f"{rpc}: {cases} cases; CI runs at least {MIN_CASES} (MOVIEREC_FUZZ_CASES?)"


# --------------------------------------------------------------------------- servers


def _wait_done(caller: Caller, job_id: str, timeout: float = 120.0) -> trainer_pb2.TrainJob:
    deadline = time.monotonic() + timeout
    while True:
        code, details, job, _ = caller.unary("GetJob", trainer_pb2.GetJobRequest(job_id=job_id).SerializeToString(),
                                             trainer_pb2.TrainJob)
        assert code == Code.OK, (code, details)
        if job.state in (trainer_pb2.TrainJob.SUCCEEDED, trainer_pb2.TrainJob.FAILED, trainer_pb2.TrainJob.CANCELLED):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {trainer_pb2.TrainJob.State.Name(job.state)}"
        time.sleep(0.1)


KNOWN_JOBS: list[str] = []   # every job id the trainer has accepted in this module
DONE_JOBS: list[str] = []    # the ones known to be finished (safe to watch)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-trainer")
    data_root = write_grouplens_files(base / "data")
    (data_root / "bad.data").write_text("1\t2\tthree\t4\nnot a rating line\n")
    (data_root / "empty.data").write_text("")
    (data_root / "binary.data").write_bytes(bytes(range(256)) * 4)
    (data_root / "sub").mkdir()
    (data_root / "escape.data").symlink_to("/etc/passwd")
    (data_root / "loop").symlink_to("loop")
    # One published version, for ListVersions and PinVersion to find.
    published = publish(str(base / "models"), tiny_artifact(), VersionMetadata(model_kind="test"))
    server = start_trainer(base / "models", base, "--data-root", str(data_root), "--queue-size", str(QUEUE_SIZE),
                           env={"MOVIELENS_DIR": str(base / "no-movielens-here")})
    channel = grpc.insecure_channel(server.address)
    caller = Caller(channel, "movierec.v1.Trainer")
    # Two real, finished jobs to look up: one FAILED (no MovieLens), one CANCELLED.
    code, details, failed, _ = caller.unary(
        "Train", trainer_pb2.TrainRequest(model="two_tower", epochs=1).SerializeToString(), trainer_pb2.TrainJob)
    assert code == Code.OK, (code, details)
    code, details, cancelled, _ = caller.unary("Train", trainer_pb2.TrainRequest(
        model="ease", dataset=trainer_pb2.DatasetSpec(ratings_path="ratings.data", items_path="items.item"),
        evaluation=trainer_pb2.EvaluationSpec(holdout_size=2)).SerializeToString(), trainer_pb2.TrainJob)
    assert code == Code.OK, (code, details)
    caller.unary("CancelJob", trainer_pb2.CancelJobRequest(job_id=cancelled.id).SerializeToString(),
                 trainer_pb2.TrainJob)
    failed, cancelled = _wait_done(caller, failed.id), _wait_done(caller, cancelled.id)
    assert failed.state == trainer_pb2.TrainJob.FAILED, failed
    assert "ml-100k" in failed.error or "MovieLens" in failed.error, failed.error
    KNOWN_JOBS[:] = [failed.id, cancelled.id]
    DONE_JOBS[:] = [failed.id, cancelled.id]
    yield {"server": server, "channel": channel, "caller": caller, "failed": failed, "cancelled": cancelled,
           "base": base, "data_root": data_root, "versions": [published]}
    channel.close()
    server.terminate()


@pytest.fixture(scope="module")
def recommender(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-recommender")
    model_root = base / "models"
    encoder = QueryEncoder((Part(POOLED, ARTIFACT.user_vectors.shape[1]),))  # sessions: the mean of their movies
    files, movies = movie_metadata.files_for_version(
        movie_metadata.MovieMetadata.build(GENRES, GENRE_BITS, YEARS.astype(np.int16)))
    version = publish(str(model_root), ARTIFACT, VersionMetadata(model_kind="test", query_encoder=encoder.to_json(),
                                                                 movies=movies), files)
    server = start_recommender(model_root, base)  # interactions go to base / events.sqlite
    with RecommenderClient(server.address, timeout=10) as client:
        client.wait_until_serving(timeout=120)
    channel = grpc.insecure_channel(server.address)
    yield {"server": server, "channel": channel, "caller": Caller(channel, "movierec.v1.Recommender"),
           "version": version, "events_url": f"sqlite:///{base / 'events.sqlite'}"}
    channel.close()
    server.terminate()


@pytest.fixture(scope="module", autouse=True)
def print_histogram():
    yield
    if HISTOGRAM:
        print("\n\nstatus codes per RPC (fuzz cases):")
        for rpc, counts in HISTOGRAM.items():
            total = sum(counts.values())
            print(f"  {rpc:15s} {total:5d} cases, {TIMINGS.get(rpc, 0):6.1f}s: "
                  + ", ".join(f"{name} {n}" for name, n in counts.most_common()))


def test_every_rpc_is_fuzzed():
    """A new RPC needs its own fuzz (and its expected codes) here before it ships."""
    methods = {method.name for service in SERVICES.values() for method in service.methods}
    assert methods == set(EXPECTED), f"fuzzed: {sorted(EXPECTED)}; the services have: {sorted(methods)}"
    fuzzed = {name.removeprefix("test_fuzz_") for name in globals() if name.startswith("test_fuzz_")}
    assert {snake_case(m) for m in methods} == fuzzed, fuzzed


def snake_case(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def assert_recommender_healthy(recommender) -> None:
    server, caller = recommender["server"], recommender["caller"]
    assert server.alive()
    health = health_pb2_grpc.HealthStub(recommender["channel"])
    assert health.Check(health_pb2.HealthCheckRequest(service="movierec.v1.Recommender"),
                        timeout=DEADLINE).status == health_pb2.HealthCheckResponse.SERVING
    user = USER_IDS[0]
    code, details, response, _ = caller.unary(
        "Recommend", recommender_pb2.RecommendRequest(user_id=user, k=5).SerializeToString(),
        recommender_pb2.RecommendResponse)
    assert code == Code.OK, (code, details)
    assert response.model_version == recommender["version"]
    cold_start, judge = expected_answer(user, 5, True)
    assert response.cold_start == cold_start and judge(response.items) == ""
    code, details, status, _ = caller.unary("GetModelStatus", b"", recommender_pb2.ModelStatus)
    assert code == Code.OK, (code, details)
    assert status.served_version == recommender["version"]
    assert (status.num_users, status.num_items) == (len(USER_IDS), len(MOVIE_IDS))


def assert_trainer_healthy(trainer) -> None:
    server, caller = trainer["server"], trainer["caller"]
    assert server.alive()
    health = health_pb2_grpc.HealthStub(trainer["channel"])
    assert health.Check(health_pb2.HealthCheckRequest(service="movierec.v1.Trainer"),
                        timeout=DEADLINE).status == health_pb2.HealthCheckResponse.SERVING
    code, details, listed, _ = caller.unary("ListJobs", trainer_pb2.ListJobsRequest(limit=MAX_LIST_LIMIT)
                                            .SerializeToString(), trainer_pb2.ListJobsResponse)
    assert code == Code.OK, (code, details)
    listed_ids = {job.id for job in listed.jobs}
    assert {trainer["failed"].id, trainer["cancelled"].id} <= listed_ids or len(listed.jobs) == MAX_LIST_LIMIT
    for reference in (trainer["failed"], trainer["cancelled"]):
        code, details, job, _ = caller.unary("GetJob", trainer_pb2.GetJobRequest(job_id=reference.id)
                                             .SerializeToString(), trainer_pb2.TrainJob)
        assert code == Code.OK, (code, details)
        assert (job.id, job.state, job.error) == (reference.id, reference.state, reference.error)


def _cancel(caller: Caller, job_id: str) -> None:
    code, details, _, _ = caller.unary("CancelJob", trainer_pb2.CancelJobRequest(job_id=job_id).SerializeToString(),
                                       trainer_pb2.TrainJob)
    assert code == Code.OK, (code, details)


# --------------------------------------------------------------------------- recommender fuzz


def test_fuzz_recommend(recommender):
    caller, server = recommender["caller"], recommender["server"]

    @FUZZ_SETTINGS
    @given(payloads(recommend_requests()), deadlines())
    def fuzz(payload, timeout):
        request, data = payload
        code, details, response, _ = caller.unary("Recommend", data, recommender_pb2.RecommendResponse, timeout)
        if not check_status("Recommend", server, code, details, timeout,
                            malformed=not parses(data, recommender_pb2.RecommendRequest)):
            return
        request = request or recommender_pb2.RecommendRequest.FromString(data)
        expected = recommend_code(request)
        assert code == expected, f"{code.name} {details!r:.200}, expected {expected.name}, for {request!r:.300}"
        if code != Code.OK:
            return
        assert response.model_version == recommender["version"]
        recent = list(request.recent_movie_ids)
        unknown = list(dict.fromkeys([*(m for m in recent if m not in MOVIE_INDEX), *filter_unknown_ids(request)]))
        assert list(response.unknown_movie_ids) == unknown, (list(response.unknown_movie_ids), unknown)
        exclude = request.exclude_seen if request.HasField("exclude_seen") else True
        cold_start, judge = expected_answer(request.user_id, request.k, exclude, recent, passing(request))
        assert response.cold_start == cold_start, f"cold_start={response.cold_start} for {request!r:.300}"
        problem = judge(response.items)
        assert not problem, f"{problem} for {request!r:.300}"

    run_fuzz("Recommend", fuzz)
    assert_recommender_healthy(recommender)


def test_fuzz_recommend_batch(recommender):
    caller, server = recommender["caller"], recommender["server"]

    @FUZZ_SETTINGS
    @given(payloads(recommend_batch_requests()), deadlines())
    def fuzz(payload, timeout):
        request, data = payload
        code, details, response, _ = caller.unary("RecommendBatch", data, recommender_pb2.RecommendBatchResponse,
                                                   timeout)
        malformed = not parses(data, recommender_pb2.RecommendBatchRequest)
        if not check_status("RecommendBatch", server, code, details, timeout, malformed=malformed, size=len(data)):
            return
        request = request or recommender_pb2.RecommendBatchRequest.FromString(data)
        expected = batch_code(request)
        assert code == expected, f"{code.name} {details!r:.200}, expected {expected.name}, for " \
                                 f"{len(request.user_ids)} users, k={request.k}"
        if code != Code.OK:
            return
        assert response.model_version == recommender["version"]
        assert [r.user_id for r in response.results] == list(request.user_ids), "results not in request order"
        exclude = request.exclude_seen if request.HasField("exclude_seen") else True
        assert list(response.unknown_movie_ids) == filter_unknown_ids(request)
        allowed = passing(request)
        judged: dict[str, object] = {}
        for result in response.results:
            if result.user_id not in judged:
                judged[result.user_id] = expected_answer(result.user_id, request.k, exclude, (), allowed)
            cold_start, judge = judged[result.user_id]
            assert result.cold_start == cold_start, f"cold_start={result.cold_start} for {result.user_id!r}"
            problem = judge(result.items)
            assert not problem, f"{problem} for user {result.user_id!r:.100}, k={request.k}"

    run_fuzz("RecommendBatch", fuzz)
    assert_recommender_healthy(recommender)


def test_fuzz_similar_items(recommender):
    caller, server = recommender["caller"], recommender["server"]

    @FUZZ_SETTINGS
    @given(payloads(similar_items_requests), deadlines())
    def fuzz(payload, timeout):
        request, data = payload
        code, details, response, _ = caller.unary("SimilarItems", data, recommender_pb2.SimilarItemsResponse, timeout)
        malformed = not parses(data, recommender_pb2.SimilarItemsRequest)
        if not check_status("SimilarItems", server, code, details, timeout, malformed=malformed):
            return
        request = request or recommender_pb2.SimilarItemsRequest.FromString(data)
        expected = similar_code(request)
        assert code == expected, f"{code.name} {details!r:.200}, expected {expected.name}, for {request!r}"
        if code == Code.NOT_FOUND:
            assert str(request.movie_id) in details, details
        if code != Code.OK:
            return
        assert response.model_version == recommender["version"]
        assert (response.movie.movie_id, response.movie.title) == (request.movie_id, TITLES[request.movie_id])
        assert list(response.unknown_movie_ids) == filter_unknown_ids(request)
        problem = similar_problem(request.movie_id, request.k, response.items, passing(request))
        assert not problem, f"{problem} for {request!r}"

    run_fuzz("SimilarItems", fuzz)
    assert_recommender_healthy(recommender)


EVENT_IDS = [f"ev-{n}" for n in range(60)]  # a pool: resends (mostly of the same content) and conflicts happen
# Users of their own: what is recorded becomes their fresh history and changes their answers, which the
# Recommend oracle (the served artifact alone) must not see for the users it asks about.
RECORDING_USERS = [f"recording-{n}" for n in range(20)]
recording_user_ids = st.one_of(st.sampled_from(["", " ", "\t", "recording-" + "x" * 250]),
                               texts().map(lambda text: "recording-" + text))


@st.composite
def interactions(draw) -> recommender_pb2.Interaction:
    """Mostly well-formed (so OK and ALREADY_EXISTS are common), each field hostile now and then."""
    hostile = draw(st.sampled_from(["none"] * 6 + ["event_id", "user_id", "movie_id", "rating", "occurred_at",
                                                   "recommendation_id"]))
    item = recommender_pb2.Interaction(
        event_id=draw(st.one_of(st.uuids().map(str), texts("", " ", "x" * 129)) if hostile == "event_id"
                      else st.sampled_from(EVENT_IDS)),
        user_id=draw(recording_user_ids if hostile == "user_id" else st.sampled_from(RECORDING_USERS)),
        movie_id=draw(movie_id_values if hostile == "movie_id" else st.sampled_from(MOVIE_IDS)),
        recommendation_id=draw(texts("", "1-abc-7", "x" * 129) if hostile == "recommendation_id" else st.just("")))
    rating = draw(doubles(0.49, 5.01, 0.0, -1.0) if hostile == "rating"
                  else optional(st.sampled_from([0.5, 1.0, 3.5, 5.0])))
    if rating is not None:
        item.rating = rating
    seconds = draw(st.sampled_from([0, -1, 253_402_300_799, int(time.time()) + 10 * 86_400]) if hostile == "occurred_at"
                   else optional(st.integers(1_500_000_000, 1_700_000_000)))
    if seconds is not None:
        item.occurred_at.seconds = seconds
    if hostile == "none" and draw(st.sampled_from([True, True, False])):  # the same content as every resend
        n = EVENT_IDS.index(item.event_id)
        item = recommender_pb2.Interaction(event_id=item.event_id, user_id=RECORDING_USERS[n % len(RECORDING_USERS)],
                                           movie_id=MOVIE_IDS[n % len(MOVIE_IDS)], rating=0.5 + n % 10 / 2)
        item.occurred_at.seconds = 1_600_000_000 + n
    return item


@st.composite
def record_requests(draw) -> recommender_pb2.RecordInteractionsRequest:
    size = draw(st.sampled_from([0, 1, 1, 1, 2, 2, 3, 5, MAX_INTERACTIONS, MAX_INTERACTIONS + 1]))
    head = draw(st.lists(interactions(), min_size=1, max_size=min(max(size, 1), 6)))
    return recommender_pb2.RecordInteractionsRequest(interactions=[head[i % len(head)] for i in range(size)])


def _interaction_problem(item: recommender_pb2.Interaction, now: float) -> bool:
    if not item.event_id.strip() or len(item.event_id.encode("utf-8")) > MAX_EVENT_ID_BYTES:
        return True
    if user_id_problem(item.user_id) or len(item.recommendation_id.encode("utf-8")) > MAX_EVENT_ID_BYTES:
        return True
    if item.HasField("rating") and not (math.isfinite(item.rating) and 0.5 <= item.rating <= 5.0):
        return True
    if item.HasField("occurred_at"):
        stamp = item.occurred_at.seconds + item.occurred_at.nanos / 1e9
        return not 0 < stamp <= now + MAX_FUTURE_SECONDS
    return False


def _content(item: recommender_pb2.Interaction) -> tuple:
    """What a caller chose: None for an unset time (the time of receipt, which no resend can match)."""
    return (item.user_id, item.movie_id, item.rating if item.HasField("rating") else None, item.recommendation_id,
            item.occurred_at.seconds + item.occurred_at.nanos / 1e9 if item.HasField("occurred_at") else None)


def _same(resent: tuple, stored: tuple) -> bool:
    return resent[:4] == stored[:4] and (resent[4] is None or resent[4] == stored[4])


def _stored_contents(url: str) -> dict[str, tuple]:
    store = open_store(url)
    assert store is not None
    try:
        rows = store.read_after(0, 10_000_000)
    finally:
        store.close()
    return {row.interaction.event_id: (row.interaction.user_id, row.interaction.movie_id, row.interaction.rating,
                                       row.interaction.recommendation_id or "", row.interaction.occurred_at)
            for row in rows}


def test_fuzz_record_interactions(recommender):
    caller, server = recommender["caller"], recommender["server"]
    stored: dict[str, tuple] = {}  # the oracle's own record of what is stored: event id -> content

    @FUZZ_SETTINGS
    @given(payloads(record_requests()), deadlines())
    def fuzz(payload, timeout):
        request, data = payload
        code, details, response, _ = caller.unary("RecordInteractions", data,
                                                  recommender_pb2.RecordInteractionsResponse, timeout)
        if code == Code.DEADLINE_EXCEEDED:  # written or not: the store says (what the caller would resend into)
            stored.clear()
            stored.update(_stored_contents(recommender["events_url"]))
        malformed = not parses(data, recommender_pb2.RecordInteractionsRequest)
        if not check_status("RecordInteractions", server, code, details, timeout, malformed=malformed,
                            size=len(data)):
            return
        request = request or recommender_pb2.RecordInteractionsRequest.FromString(data)
        batch = list(request.interactions)
        now = time.time()
        if not 1 <= len(batch) <= MAX_INTERACTIONS or any(_interaction_problem(i, now) for i in batch):
            expected, new = Code.INVALID_ARGUMENT, {}
        else:
            expected, new, seen = Code.OK, {}, dict(stored)
            for index, item in enumerate(batch):
                earlier = seen.get(item.event_id)
                if earlier is None:
                    seen[item.event_id] = new[item.event_id] = _content(item)
                elif not _same(_content(item), earlier):
                    expected = Code.ALREADY_EXISTS
                    assert f"interactions[{index}].event_id" in details or code != Code.ALREADY_EXISTS, details
                    break
        assert code == expected, f"{code.name} {details!r:.300}, expected {expected.name}, for {len(batch)} items"
        if code != Code.OK:
            return
        assert (response.stored, response.duplicates) == (len(new), len(batch) - len(new)), (response, len(new))
        unknown = list(dict.fromkeys(i.movie_id for i in batch if i.movie_id not in MOVIE_INDEX))
        assert list(response.unknown_movie_ids) == unknown
        stored.update(new)

    run_fuzz("RecordInteractions", fuzz)
    assert_recommender_healthy(recommender)


def test_fuzz_get_model_status(recommender):
    caller, server = recommender["caller"], recommender["server"]

    @FUZZ_SETTINGS
    @given(payloads(model_status_requests), deadlines())
    def fuzz(payload, timeout):
        _, data = payload
        code, details, status, _ = caller.unary("GetModelStatus", data, recommender_pb2.ModelStatus, timeout)
        malformed = not parses(data, recommender_pb2.GetModelStatusRequest)
        if not check_status("GetModelStatus", server, code, details, timeout, malformed=malformed):
            return
        # The request has no fields: anything that parses (unknown fields included) must be answered.
        assert code == Code.OK, (code, details)
        assert status.served_version == recommender["version"]
        assert [v.version for v in status.versions if v.state == recommender_pb2.ModelVersion.SERVING] == \
            [recommender["version"]]
        assert (status.num_users, status.num_items) == (len(USER_IDS), len(MOVIE_IDS))

    run_fuzz("GetModelStatus", fuzz)
    assert_recommender_healthy(recommender)


# --------------------------------------------------------------------------- trainer fuzz


class TrainLedger:
    """What the test knows the trainer holds: idempotency keys and the jobs they name.

    A call whose deadline expired on purpose may or may not have reached the
    server; its key is then only *possibly* taken (``maybe``), until a later
    call with that key says which.
    """

    def __init__(self, data_root: Path):
        self.data_root = data_root
        self.keys: dict[str, tuple[str, tuple]] = {}     # key -> (job id, spec)
        self.maybe: dict[str, list[tuple]] = defaultdict(list)
        self.pending: list[str] = []                     # accepted, not cancelled yet
        self.lost_calls = 0                              # expired calls that may have queued a job
        self.accepted = 0                                # valid new requests answered OK (a new job)
        self.refused = 0                                 # valid new requests answered "queue is full"

    def judge(self, request, code, details, job, problems: list[str], waiting=None) -> None:
        """``waiting()``: at most how many jobs were waiting in the queue when this call was answered."""
        key, spec = request.idempotency_key, train_spec(request)
        if problems:
            assert code == Code.INVALID_ARGUMENT, f"{code.name} for a request with {problems}: {request!r:.400}"
            if len(problems) == 1 and not problems[0].startswith("path"):
                assert problems[0] in details, f"the message does not name {problems[0]!r}: {details!r:.300}"
            return
        if key in self.keys:  # the same key again: the same job for the same request, else a conflict
            job_id, first_spec = self.keys[key]
            if spec == first_spec:
                assert code == Code.OK, f"{code.name} {details!r:.200} replaying key {key!r}"
                assert job.id == job_id, "the same key and request returned a different job"
            else:
                assert code == Code.ALREADY_EXISTS, f"{code.name} for key {key!r} with another request"
                assert job_id in details, details
            return
        if key in self.maybe:  # first sent by calls that expired: any of them may have made a job
            if code == Code.ALREADY_EXISTS:
                job_id = re.findall(r"job-[0-9a-f]{12}", details)[-1]
                matching = [s for s in self.maybe[key] if s != spec]
                assert matching, f"ALREADY_EXISTS for key {key!r}, but every earlier use had this same request"
                self.keys[key] = (job_id, matching[0]) if len(matching) == 1 else (job_id, ())
                return
            if code == Code.OK:
                self.record(key, spec, job)  # a replay (any state) or a new job
                return
            self.judge_full(code, details, waiting)
            return
        # A new job: queued at once, or refused because the queue is full.
        if code == Code.RESOURCE_EXHAUSTED:
            self.judge_full(code, details, waiting)
            self.refused += 1
            return
        assert code == Code.OK, f"{code.name} {details!r:.300} for a valid request {request!r:.400}"
        self.accepted += 1
        assert job.state == trainer_pb2.TrainJob.QUEUED, f"a new job is {trainer_pb2.TrainJob.State.Name(job.state)}"
        assert job.id not in KNOWN_JOBS, "a new request got an existing job"
        self.record(key, spec, job)

    def judge_full(self, code, details, waiting) -> None:
        """A "queue is full" answer must be true: QUEUE_SIZE jobs waiting behind the running one."""
        assert code == Code.RESOURCE_EXHAUSTED and "queue is full" in details, (code, details)
        could_wait = waiting()
        assert could_wait >= QUEUE_SIZE, (
            f"'queue is full' with at most {could_wait} job(s) waiting (queue size {QUEUE_SIZE}): {details!r:.200}")

    def record(self, key: str, spec: tuple, job) -> None:
        assert job.id.startswith("job-"), job.id
        assert train_spec(job.request) == spec, "the job does not hold the request that made it"
        if job.id not in KNOWN_JOBS:
            KNOWN_JOBS.append(job.id)
            self.pending.append(job.id)
        if key:
            self.keys[key] = (job.id, spec)
            self.maybe.pop(key, None)

    def expired(self, request) -> None:
        if request is None or train_problems(request, self.data_root):
            return  # refused before anything was queued
        key = request.idempotency_key
        if key in self.keys:
            return  # a replay or a conflict: no new job either way
        self.lost_calls += 1
        if key:
            self.maybe[key].append(train_spec(request))


def test_fuzz_train(trainer):
    caller, server = trainer["caller"], trainer["server"]
    ledger = TrainLedger(trainer["data_root"])

    def waiting_since(sent: float):
        """Counts the trainer's jobs that may have been waiting when a call sent at ``sent`` (epoch seconds)
        was answered: still QUEUED now, or started after it was sent (a job leaves the queue only by
        starting or being cancelled, and this test cancels only after judging). Jobs queued unseen by
        expired calls are on the list too."""
        def count() -> int:
            code, details, listed, _ = caller.unary(
                "ListJobs", trainer_pb2.ListJobsRequest(limit=MAX_LIST_LIMIT).SerializeToString(),
                trainer_pb2.ListJobsResponse)
            assert code == Code.OK, (code, details)
            assert len(listed.jobs) < MAX_LIST_LIMIT, "too many jobs to see them all"
            return sum(job.state == trainer_pb2.TrainJob.QUEUED
                       or job.started_at.seconds + job.started_at.nanos / 1e9 >= sent for job in listed.jobs)
        return count

    @FUZZ_SETTINGS
    @given(payloads(train_requests()), deadlines())
    def fuzz(payload, timeout):
        request, data = payload
        sent = time.time()  # the trainer stamps started_at with the same clock
        code, details, job, _ = caller.unary("Train", data, trainer_pb2.TrainJob, timeout)
        malformed = not parses(data, trainer_pb2.TrainRequest)
        request = request or (None if malformed else trainer_pb2.TrainRequest.FromString(data))
        if code == Code.DEADLINE_EXCEEDED:
            ledger.expired(request)  # the client gave up; the server may still have queued the job
        if not check_status("Train", server, code, details, timeout, malformed=malformed):
            return
        ledger.judge(request, code, details, job, train_problems(request, trainer["data_root"]),
                     waiting_since(sent))
        if code == Code.RESOURCE_EXHAUSTED:
            # The queue is full; empty it so the next valid requests get in (and CPU stays free).
            for job_id in ledger.pending:
                _cancel(caller, job_id)
            ledger.pending.clear()

    try:
        run_fuzz("Train", fuzz)
    finally:
        for job_id in ledger.pending:
            _cancel(caller, job_id)
    # "queue is full" must not stand in for valid requests: each refusal empties the queue, after which
    # QUEUE_SIZE new jobs fit before the next one can be refused, so most valid new requests are accepted.
    print(f"\nTrain: {ledger.accepted} valid new requests accepted, {ledger.refused} refused as queue full")
    assert ledger.accepted >= CASES // 20, f"only {ledger.accepted} new jobs accepted in {CASES} cases"
    assert ledger.accepted >= QUEUE_SIZE * ledger.refused - ledger.lost_calls, (ledger.accepted, ledger.refused)
    # Jobs queued by calls whose client deadline expired first: at most one per such call.
    code, details, listed, _ = caller.unary("ListJobs", trainer_pb2.ListJobsRequest(limit=MAX_LIST_LIMIT)
                                            .SerializeToString(), trainer_pb2.ListJobsResponse)
    assert code == Code.OK, (code, details)
    on_server = [j.id for j in listed.jobs]
    assert set(KNOWN_JOBS) <= set(on_server), "a job the trainer accepted is missing from ListJobs"
    unseen = [job_id for job_id in on_server if job_id not in KNOWN_JOBS]
    assert len(unseen) <= ledger.lost_calls, (unseen, ledger.lost_calls)
    KNOWN_JOBS.extend(unseen)
    # Every accepted job ends (cancelled, or failed fast for want of MovieLens); none hangs the worker.
    for job_id in KNOWN_JOBS:
        job = _wait_done(caller, job_id, timeout=180)
        if job_id not in DONE_JOBS:
            DONE_JOBS.append(job_id)
        if job.state == trainer_pb2.TrainJob.FAILED:
            assert job.error.strip(), job
    # A valid job the fuzz did not cancel in time may have published: the versions are what the root
    # now holds, with every job ended (the ListVersions and PinVersion fuzz below judge by them).
    trainer["versions"][:] = _complete_versions(trainer["base"] / "models")
    assert_trainer_healthy(trainer)


def expected_job_code(job_id: str):
    if not job_id or len(job_id) > MAX_JOB_ID:
        return Code.INVALID_ARGUMENT
    return Code.OK if job_id in KNOWN_JOBS else Code.NOT_FOUND


def test_fuzz_get_job(trainer):
    caller, server = trainer["caller"], trainer["server"]

    @FUZZ_SETTINGS
    @given(payloads(st.builds(trainer_pb2.GetJobRequest, job_id=job_ids(KNOWN_JOBS))), deadlines())
    def fuzz(payload, timeout):
        request, data = payload
        code, details, job, _ = caller.unary("GetJob", data, trainer_pb2.TrainJob, timeout)
        if not check_status("GetJob", server, code, details, timeout,
                            malformed=not parses(data, trainer_pb2.GetJobRequest)):
            return
        request = request or trainer_pb2.GetJobRequest.FromString(data)
        assert code == expected_job_code(request.job_id), f"{code.name} {details!r} for {request.job_id!r:.200}"
        if code == Code.OK:
            assert job.id == request.job_id

    run_fuzz("GetJob", fuzz)
    assert_trainer_healthy(trainer)


def test_fuzz_list_jobs(trainer):
    caller, server = trainer["caller"], trainer["server"]

    @FUZZ_SETTINGS
    @given(payloads(st.builds(trainer_pb2.ListJobsRequest, limit=int32s(50, 51, MAX_LIST_LIMIT, MAX_LIST_LIMIT + 1))),
           deadlines())
    def fuzz(payload, timeout):
        request, data = payload
        code, details, listed, _ = caller.unary("ListJobs", data, trainer_pb2.ListJobsResponse, timeout)
        if not check_status("ListJobs", server, code, details, timeout,
                            malformed=not parses(data, trainer_pb2.ListJobsRequest)):
            return
        request = request or trainer_pb2.ListJobsRequest.FromString(data)
        if 0 <= request.limit <= MAX_LIST_LIMIT:
            assert code == Code.OK, (code, details, request.limit)
            assert len(listed.jobs) == min(request.limit or 50, len(KNOWN_JOBS))
            created = [job.created_at.ToNanoseconds() for job in listed.jobs]
            assert created == sorted(created, reverse=True), "not newest first"
            assert {job.id for job in listed.jobs} <= set(KNOWN_JOBS)
        else:
            assert code == Code.INVALID_ARGUMENT, (code, request.limit)

    run_fuzz("ListJobs", fuzz)
    assert_trainer_healthy(trainer)


def test_fuzz_watch_job(trainer):
    caller, server = trainer["caller"], trainer["server"]

    @FUZZ_SETTINGS
    @given(payloads(st.builds(trainer_pb2.GetJobRequest, job_id=job_ids(DONE_JOBS))))
    def fuzz(payload):
        request, data = payload
        code, details, messages, seconds = caller.stream("WatchJob", data, trainer_pb2.TrainJob)
        if not check_status("WatchJob", server, code, details, WATCH_DEADLINE,
                            malformed=not parses(data, trainer_pb2.GetJobRequest)):
            return
        request = request or trainer_pb2.GetJobRequest.FromString(data)
        expected = expected_job_code(request.job_id)
        assert code == expected, f"{code.name} {details!r} for {request.job_id!r:.200}"
        if code == Code.OK:
            # A finished job: one message with its final state, then the stream ends.
            assert len(messages) == 1, messages
            assert messages[0].id == request.job_id
            assert messages[0].state in (trainer_pb2.TrainJob.SUCCEEDED, trainer_pb2.TrainJob.FAILED,
                                         trainer_pb2.TrainJob.CANCELLED)
        else:
            assert not messages
            assert seconds < WATCH_DEADLINE, f"refusing {request.job_id!r:.100} took {seconds:.1f}s"

    run_fuzz("WatchJob", fuzz)
    assert_trainer_healthy(trainer)


def test_fuzz_cancel_job(trainer):
    caller, server = trainer["caller"], trainer["server"]
    before = {}
    for job_id in DONE_JOBS:
        _, _, job, _ = caller.unary("GetJob", trainer_pb2.GetJobRequest(job_id=job_id).SerializeToString(),
                                    trainer_pb2.TrainJob)
        before[job_id] = job

    @FUZZ_SETTINGS
    @given(payloads(st.builds(trainer_pb2.CancelJobRequest, job_id=job_ids(DONE_JOBS))), deadlines())
    def fuzz(payload, timeout):
        request, data = payload
        code, details, job, _ = caller.unary("CancelJob", data, trainer_pb2.TrainJob, timeout)
        if not check_status("CancelJob", server, code, details, timeout,
                            malformed=not parses(data, trainer_pb2.CancelJobRequest)):
            return
        request = request or trainer_pb2.CancelJobRequest.FromString(data)
        assert code == expected_job_code(request.job_id), f"{code.name} {details!r} for {request.job_id!r:.200}"
        if code == Code.OK:
            # Every job here has finished: cancelling returns it unchanged.
            assert job == before[request.job_id]

    run_fuzz("CancelJob", fuzz)
    assert_trainer_healthy(trainer)


def _complete_versions(model_root: Path) -> list[int]:
    return sorted((int(p.name) for p in model_root.iterdir() if p.name.isdigit()
                   and (p / "metadata.json").is_file()), reverse=True)


def test_fuzz_list_versions(trainer):
    caller, server = trainer["caller"], trainer["server"]
    versions = _complete_versions(trainer["base"] / "models")
    assert versions == trainer["versions"]
    # The fixture's version is kind "test"; jobs of the Train fuzz may have published others.
    kinds = [json.loads((trainer["base"] / "models" / str(v) / "metadata.json").read_text())["model_kind"]
             for v in versions]

    @FUZZ_SETTINGS
    @given(payloads(st.just(trainer_pb2.ListVersionsRequest())), deadlines())
    def fuzz(payload, timeout):
        _, data = payload
        code, details, listed, _ = caller.unary("ListVersions", data, trainer_pb2.ListVersionsResponse, timeout)
        if not check_status("ListVersions", server, code, details, timeout,
                            malformed=not parses(data, trainer_pb2.ListVersionsRequest)):
            return
        assert code == Code.OK, (code, details)  # no fields: whatever parses is answered
        assert [v.version for v in listed.versions] == versions
        assert [v.model_kind for v in listed.versions] == kinds, listed
        assert all(v.size_bytes > 0 for v in listed.versions), listed
        assert listed.pinned_version == 0

    run_fuzz("ListVersions", fuzz)
    assert_trainer_healthy(trainer)


def test_fuzz_pin_version(trainer):
    caller, server = trainer["caller"], trainer["server"]
    versions = trainer["versions"]
    # What the pin may be now: one version, or two after a call that ran out of time (its write may have
    # been under way, and may land after a ListVersions the test would send, so asking would race it).
    pinned = {0}

    @FUZZ_SETTINGS
    @given(payloads(st.builds(trainer_pb2.PinVersionRequest, version=int64s(*versions, max(versions) + 1))),
           deadlines())
    def fuzz(payload, timeout):
        request, data = payload
        code, details, response, _ = caller.unary("PinVersion", data, trainer_pb2.PinVersionResponse, timeout)
        if code == Code.DEADLINE_EXCEEDED and parses(data, trainer_pb2.PinVersionRequest):
            version = (request or trainer_pb2.PinVersionRequest.FromString(data)).version
            if version == 0 or version in versions:
                pinned.add(version)
        if not check_status("PinVersion", server, code, details, timeout,
                            malformed=not parses(data, trainer_pb2.PinVersionRequest)):
            return
        request = request or trainer_pb2.PinVersionRequest.FromString(data)
        if request.version < 0:
            expected = Code.INVALID_ARGUMENT
        else:
            expected = Code.OK if request.version == 0 or request.version in versions else Code.NOT_FOUND
        assert code == expected, f"{code.name} {details!r:.200}, expected {expected.name}, for {request.version}"
        if code == Code.NOT_FOUND:
            assert str(request.version) in details, details
        if code != Code.OK:
            return
        assert response.pinned_version == request.version
        assert response.previous_pinned_version in pinned, (response.previous_pinned_version, pinned)
        pinned.clear()
        pinned.add(request.version)

    try:
        run_fuzz("PinVersion", fuzz)
    finally:
        caller.unary("PinVersion", trainer_pb2.PinVersionRequest(version=0).SerializeToString(),
                     trainer_pb2.PinVersionResponse)
    _, _, listed, _ = caller.unary("ListVersions", b"", trainer_pb2.ListVersionsResponse)
    assert listed.pinned_version == 0
    assert_trainer_healthy(trainer)


def hidden_id_lists() -> st.SearchStrategy[list[int]]:
    """Empty, a few, or lists at and past the per-call limit (of a few distinct ids, so the hidden list stays
    small and every call stays cheap)."""
    return st.one_of(movie_id_lists(MAX_HIDE_IDS), st.lists(int64s(0, -1), max_size=3))


def _hidden_now(caller: Caller) -> list[int]:
    _, _, listed, _ = caller.unary("ListHiddenMovies", b"", trainer_pb2.HiddenMovies)
    return list(listed.movie_ids)


def _fuzz_hidden_change(trainer, rpc: str, request_type, change) -> None:
    """HideMovies or UnhideMovies against a model of the list: ``change(before, ids)`` is the list after."""
    caller, server = trainer["caller"], trainer["server"]
    # The lists the hidden movies may be now: one, or more after calls that ran out of time (a write under
    # way may land after a ListHiddenMovies the test would send, so asking would race it).
    hidden = [_hidden_now(caller)]
    sequence = [0]

    @FUZZ_SETTINGS
    @given(payloads(st.builds(request_type, movie_ids=hidden_id_lists())), deadlines())
    def fuzz(payload, timeout):
        request, data = payload
        code, details, response, _ = caller.unary(rpc, data, trainer_pb2.HiddenMovies, timeout)
        if code == Code.DEADLINE_EXCEEDED and parses(data, request_type):
            ids = list((request or request_type.FromString(data)).movie_ids)
            if 1 <= len(ids) <= MAX_HIDE_IDS:
                maybe = [*hidden, *(change(before, ids) for before in hidden)]
                hidden[:] = [list(once) for once in dict.fromkeys(map(tuple, maybe))]
        if not check_status(rpc, server, code, details, timeout, malformed=not parses(data, request_type)):
            return
        request = request or request_type.FromString(data)
        ids = list(request.movie_ids)
        expected = Code.INVALID_ARGUMENT if not ids or len(ids) > MAX_HIDE_IDS else Code.OK
        assert code == expected, f"{code.name} {details!r:.200}, expected {expected.name}, for {len(ids)} ids"
        if code != Code.OK:
            assert (str(MAX_HIDE_IDS) in details.replace(",", "")) if ids else "no movie ids" in details, details
            return
        possible = [(before, change(before, ids)) for before in hidden]
        matching = [(before, after) for before, after in possible if list(response.movie_ids) == after]
        assert matching, (list(response.movie_ids)[:20], [after[:20] for _, after in possible])
        before, after = matching[0]
        assert response.sequence >= sequence[0] and (response.sequence > sequence[0] or after == before)
        hidden[:], sequence[0] = [after], response.sequence

    try:
        run_fuzz(rpc, fuzz)
    finally:
        left = _hidden_now(caller)
        for start in range(0, len(left), MAX_HIDE_IDS):
            caller.unary("UnhideMovies", trainer_pb2.UnhideMoviesRequest(
                movie_ids=left[start:start + MAX_HIDE_IDS]).SerializeToString(), trainer_pb2.HiddenMovies)
    assert _hidden_now(caller) == []
    assert_trainer_healthy(trainer)


def test_fuzz_hide_movies(trainer):
    _fuzz_hidden_change(trainer, "HideMovies", trainer_pb2.HideMoviesRequest,
                        lambda before, ids: sorted(set(before) | set(ids)))


def test_fuzz_unhide_movies(trainer):
    caller = trainer["caller"]
    caller.unary("HideMovies", trainer_pb2.HideMoviesRequest(movie_ids=[*MOVIE_IDS[:5], 0, -1]).SerializeToString(),
                 trainer_pb2.HiddenMovies)
    _fuzz_hidden_change(trainer, "UnhideMovies", trainer_pb2.UnhideMoviesRequest,
                        lambda before, ids: sorted(set(before) - set(ids)))


def test_fuzz_list_hidden_movies(trainer):
    caller, server = trainer["caller"], trainer["server"]
    caller.unary("HideMovies", trainer_pb2.HideMoviesRequest(movie_ids=[7, 3]).SerializeToString(),
                 trainer_pb2.HiddenMovies)

    @FUZZ_SETTINGS
    @given(payloads(st.just(trainer_pb2.ListHiddenMoviesRequest())), deadlines())
    def fuzz(payload, timeout):
        _, data = payload
        code, details, response, _ = caller.unary("ListHiddenMovies", data, trainer_pb2.HiddenMovies, timeout)
        if not check_status("ListHiddenMovies", server, code, details, timeout,
                            malformed=not parses(data, trainer_pb2.ListHiddenMoviesRequest)):
            return
        assert code == Code.OK, f"{code.name} {details!r:.200}"
        assert list(response.movie_ids) == [3, 7] and response.sequence > 0

    try:
        run_fuzz("ListHiddenMovies", fuzz)
    finally:
        caller.unary("UnhideMovies", trainer_pb2.UnhideMoviesRequest(movie_ids=[7, 3]).SerializeToString(),
                     trainer_pb2.HiddenMovies)
    assert_trainer_healthy(trainer)


def test_trainer_still_trains_after_the_fuzz(trainer):
    """The worker thread survived: a real (tiny) job runs to the end and is published."""
    caller = trainer["caller"]
    request = trainer_pb2.TrainRequest(
        model="ease", dataset=trainer_pb2.DatasetSpec(ratings_path="ratings.data", items_path="items.item"),
        evaluation=trainer_pb2.EvaluationSpec(holdout_size=2), quality_gate=trainer_pb2.QualityGate(disabled=True))
    code, details, job, _ = caller.unary("Train", request.SerializeToString(), trainer_pb2.TrainJob)
    assert code == Code.OK, (code, details)
    job = _wait_done(caller, job.id, timeout=180)
    assert job.state == trainer_pb2.TrainJob.SUCCEEDED, job.error
    assert job.published and job.model_version > max(trainer["versions"]), job
    assert (Path(trainer["base"]) / "models" / str(job.model_version) / "metadata.json").is_file()


# --------------------------------------------------------------------------- regressions

# Each is not a valid protobuf of any request type (UTF-8 is only checked in declared string fields,
# so the invalid-UTF-8 case is used only where field 1 is a string).
MALFORMED = [b"\x0a\x02\xff\xfe", b"\x0a\xff\xff\xff\xff\x0f", b"\x0c", b"\x0f\x00", b"\x0b" * 200]
ALL_RPCS = [
    ("recommender", "movierec.v1.Recommender", "Recommend", recommender_pb2.RecommendRequest,
     recommender_pb2.RecommendResponse, False),
    ("recommender", "movierec.v1.Recommender", "RecommendBatch", recommender_pb2.RecommendBatchRequest,
     recommender_pb2.RecommendBatchResponse, False),
    ("recommender", "movierec.v1.Recommender", "SimilarItems", recommender_pb2.SimilarItemsRequest,
     recommender_pb2.SimilarItemsResponse, False),
    ("recommender", "movierec.v1.Recommender", "GetModelStatus", recommender_pb2.GetModelStatusRequest,
     recommender_pb2.ModelStatus, False),
    ("recommender", "movierec.v1.Recommender", "RecordInteractions", recommender_pb2.RecordInteractionsRequest,
     recommender_pb2.RecordInteractionsResponse, False),
    ("trainer", "movierec.v1.Trainer", "Train", trainer_pb2.TrainRequest, trainer_pb2.TrainJob, False),
    ("trainer", "movierec.v1.Trainer", "GetJob", trainer_pb2.GetJobRequest, trainer_pb2.TrainJob, False),
    ("trainer", "movierec.v1.Trainer", "ListJobs", trainer_pb2.ListJobsRequest, trainer_pb2.ListJobsResponse, False),
    ("trainer", "movierec.v1.Trainer", "WatchJob", trainer_pb2.GetJobRequest, trainer_pb2.TrainJob, True),
    ("trainer", "movierec.v1.Trainer", "CancelJob", trainer_pb2.CancelJobRequest, trainer_pb2.TrainJob, False),
    ("trainer", "movierec.v1.Trainer", "ListVersions", trainer_pb2.ListVersionsRequest,
     trainer_pb2.ListVersionsResponse, False),
    ("trainer", "movierec.v1.Trainer", "PinVersion", trainer_pb2.PinVersionRequest, trainer_pb2.PinVersionResponse,
     False),
    ("trainer", "movierec.v1.Trainer", "HideMovies", trainer_pb2.HideMoviesRequest, trainer_pb2.HiddenMovies, False),
    ("trainer", "movierec.v1.Trainer", "UnhideMovies", trainer_pb2.UnhideMoviesRequest, trainer_pb2.HiddenMovies,
     False),
    ("trainer", "movierec.v1.Trainer", "ListHiddenMovies", trainer_pb2.ListHiddenMoviesRequest,
     trainer_pb2.HiddenMovies, False),
]
assert {rpc[2] for rpc in ALL_RPCS} == set(EXPECTED)


@pytest.mark.parametrize("which, service, method, request_type, response_type, streaming", ALL_RPCS,
                         ids=[rpc[2] for rpc in ALL_RPCS])
def test_malformed_request_is_invalid_argument(request, which, service, method, request_type, response_type,
                                               streaming):
    stack = request.getfixturevalue(which)
    caller = Caller(stack["channel"], service)
    malformed = [payload for payload in MALFORMED if not parses(payload, request_type)]
    assert len(malformed) >= 4
    for payload in malformed:
        call = caller.stream if streaming else caller.unary
        code, details, _, _ = call(method, payload, response_type)
        assert stack["server"].alive()
        assert code == Code.INVALID_ARGUMENT, f"{method} {payload[:20]!r}: {code.name} {details!r}"


def _train(trainer, request: trainer_pb2.TrainRequest):
    code, details, job, _ = trainer["caller"].unary("Train", request.SerializeToString(), trainer_pb2.TrainJob)
    assert trainer["server"].alive()
    if code == Code.OK:
        _cancel(trainer["caller"], job.id)
    return code, details


@pytest.mark.parametrize("path", ["ratings.data\x00", "x" * 256, "é" * 128, ("💥" * 63 + "/") * 16, "loop"],
                         ids=["nul-byte", "name-too-long", "name-too-long-utf8", "path-too-long", "symlink-loop"])
@pytest.mark.parametrize("field", ["ratings_path", "items_path"])
def test_train_unusable_path_is_invalid_argument(trainer, field, path):
    dataset = {"ratings_path": "ratings.data", "items_path": "items.item", field: path}
    code, details = _train(trainer, trainer_pb2.TrainRequest(
        model="ease", dataset=trainer_pb2.DatasetSpec(**dataset),
        evaluation=trainer_pb2.EvaluationSpec(holdout_size=2)))
    assert code == Code.INVALID_ARGUMENT, f"{code.name}: {details[:200]!r}"


@pytest.mark.parametrize("request_fields", [
    {"model": "x" * 10_000},
    {"model": "%" * 3_000},
    {"model": "two_tower", "evaluation": {"holdout": "h" * 10_000}},
    {"model": "ease", "dataset": {"ratings_path": ("💥" * 60 + "/") * 13, "items_path": "items.item"}},
], ids=["model-10k", "model-percent", "holdout-10k", "path-1k-non-ascii"])
def test_train_error_message_stays_small(trainer, request_fields):
    fields = dict(request_fields)
    request = trainer_pb2.TrainRequest(
        model=fields["model"],
        evaluation=trainer_pb2.EvaluationSpec(**fields.get("evaluation", {})),
        dataset=trainer_pb2.DatasetSpec(**fields.get("dataset", {})))
    code, details = _train(trainer, request)
    assert code == Code.INVALID_ARGUMENT, f"{code.name}: {details[:200]!r}"
    assert grpc_message_bytes(details) <= MAX_MESSAGE_BYTES


# --------------------------------------------------------------------------- each hostile input, its code


def _hostile_train_cases() -> list[tuple[str, dict, object]]:
    """(name, TrainRequest fields over a valid request, the code the trainer must answer).

    The fuzz above meets most of these by chance; here each one is sent for sure, and the fuzz's own
    oracle (train_problems) must agree with the code written here.
    """
    ok, invalid = Code.OK, Code.INVALID_ARGUMENT
    own_files = {"dataset": {"ratings_path": "ratings.data", "items_path": "items.item"}}
    cases = []
    for path, code in [
        ("ratings.data", ok), ("./ratings.data", ok),
        ("ratings.data/", ok),  # pathlib reads it as ratings.data: the same file inside the root
        ("bad.data", ok), ("empty.data", ok), ("binary.data", ok),  # their content is the job's to refuse
        ("escape.data", invalid),  # a symlink leading out of the data root
        ("sub", invalid), ("sub/", invalid), ("sub/../ratings.data", invalid), ("../ratings.data", invalid),
        ("nonexistent.data", invalid), ("ratings.data\x00", invalid), ("/etc/passwd", invalid),
        ("~/ratings.data", invalid), ("file:///etc/passwd", invalid), ("gs://bucket/ratings.data", invalid),
        ("a" * 1024, invalid), ("a" * 1025, invalid), ("x" * 256, invalid), ("é" * 128, invalid),
        ("loop", invalid), ("loop/ratings.data", invalid), ("", invalid),
    ]:
        cases.append((f"ratings_path={path[:30]!r}", {"dataset": {"ratings_path": path, "items_path": "items.item"}},
                      code))
    for name, (low, high, kind) in HYPERPARAMETER_RANGES.items():
        step = 1 if kind is int else (high - low) * 1e-6 or 1e-9
        values = [(low, ok), (high, ok), (0, ok), (high + step, invalid), (-1, invalid)]
        if low - step > 0:
            values.append((low - step, invalid))
        if kind is float:
            values += [(math.nan, invalid), (math.inf, invalid), (-0.0, ok)]
        for value, code in values:
            cases.append((f"{name}={value!r}", {**own_files, "hyperparameters": {name: value}}, code))
    for fields, code in [
        ({"epochs": 200}, ok), ({"epochs": 201}, invalid), ({"epochs": -1}, invalid),
        ({"model": ""}, invalid), ({"model": "TWO_TOWER"}, invalid), ({"model": "two_tower "}, invalid),
        ({"evaluation": {"holdout": "RANDOM"}}, invalid), ({"evaluation": {"holdout": "u6"}}, invalid),
        ({"evaluation": {"holdout": "ua"}}, invalid),  # a MovieLens 100K split for the caller's own files
        ({"evaluation": {"holdout": "last_n_per_user", "holdout_size": MAX_HOLDOUT_SIZE}}, ok),
        ({"evaluation": {"holdout_size": MAX_HOLDOUT_SIZE + 1}}, invalid),
        ({"evaluation": {"holdout_size": -1}}, invalid),
        ({"quality_gate": {"min_validation_recall_at_10": 1.0}}, ok),
        ({"quality_gate": {"min_validation_recall_at_10": 1.0000001}}, invalid),
        ({"quality_gate": {"min_validation_recall_at_10": math.nan}}, invalid),
        ({"quality_gate": {"min_validation_recall_at_10": -1e-9}}, invalid),
        ({"workers": TRAINER_WORKERS}, ok), ({"workers": TRAINER_WORKERS + 1}, invalid), ({"workers": -1}, invalid),
        ({"idempotency_key": "k" * MAX_KEY}, ok), ({"idempotency_key": "k" * (MAX_KEY + 1)}, invalid),
        ({"dataset": {"ratings_path": "ratings.data", "items_path": ""}}, invalid),
    ]:
        cases.append((", ".join(f"{k}={v!r}"[:60] for k, v in fields.items()), {**own_files, **fields}, code))
    cases.append(("holdout=ua on MovieLens 100K", {"evaluation": {"holdout": "ua"}}, ok))
    return cases


HOSTILE_TRAIN_CASES = _hostile_train_cases()


@pytest.mark.parametrize("fields, expected", [case[1:] for case in HOSTILE_TRAIN_CASES],
                         ids=[case[0] for case in HOSTILE_TRAIN_CASES])
def test_each_hostile_train_input_gets_its_code(trainer, fields, expected):
    request = trainer_pb2.TrainRequest(model="two_tower", epochs=1)
    for name, value in fields.items():
        if isinstance(value, dict):
            for field, inner in value.items():
                setattr(getattr(request, name), field, inner)
        else:
            setattr(request, name, value)
    assert (train_problems(request, trainer["data_root"]) == []) == (expected == Code.OK), \
        f"the fuzz's oracle disagrees: {train_problems(request, trainer['data_root'])}"
    code, details = _train(trainer, request)
    assert code == expected, f"{code.name} {details[:300]!r}, expected {expected.name}"
