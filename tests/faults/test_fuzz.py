"""Fuzzing every RPC of both services with hypothesis-generated requests.

For each RPC at least 1,000 generated requests go to a real server process on
loopback: well-formed messages with hostile field values (unicode, NUL, 10 KB
strings, int32/int64 extremes, nan/inf, long repeated fields, optional fields
set and unset) and a share of malformed protobuf bytes. Every call must come
back with a documented status code before its deadline, the server must stay
alive, and afterwards it must still answer known-good requests correctly.

Where the service's contract is simple enough, the test also knows which
answer is right (e.g. ``k`` outside 1..1000 must be INVALID_ARGUMENT, a valid
request must be OK) and checks the content of every OK answer.

The status-code histogram per RPC is printed at the end of the module (run
with ``-s`` to see it). ``MOVIEREC_FUZZ_CASES`` lowers the case count for a
quick local run; CI uses the default 1,000 (derandomized, so reproducible).

Three server bugs this fuzz found are pinned by the regression tests at the
end of the module: malformed request bytes must be INVALID_ARGUMENT (grpcio
alone says INTERNAL), dataset paths the OS cannot open (NUL, over-long names,
symlink loops) must be INVALID_ARGUMENT, and Train's error messages must stay
small whatever the caller sent.
"""

from __future__ import annotations

import math
import os
import struct
import time
from collections import Counter, defaultdict
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients import RecommenderClient
from movierec.v1 import recommender_pb2, trainer_pb2
from movierec_common.session_query import METADATA_KEY, POOLED, Part, QueryEncoder
from tests.artifacts import tiny_artifact
from tests.datagen import write_grouplens_files
from tests.servers import start_recommender, start_trainer

CASES = int(os.environ.get("MOVIEREC_FUZZ_CASES", "1000"))
DEADLINE = 10.0        # every call; a DEADLINE_EXCEEDED here is a hang
TINY_DEADLINE = 1e-4   # on purpose: DEADLINE_EXCEEDED is then allowed
WATCH_DEADLINE = 5.0
WATCH_MAX_MESSAGES = 3

Code = grpc.StatusCode
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
    "Recommend": {Code.OK, Code.INVALID_ARGUMENT},
    "RecommendBatch": {Code.OK, Code.INVALID_ARGUMENT},
    "SimilarItems": {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND},
    "GetModelStatus": {Code.OK, Code.INVALID_ARGUMENT},
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

MAX_K = 1000
MAX_RECENT_MOVIES = 1000  # recent_movie_ids per Recommend
MAX_USER_ID_BYTES = 256
MAX_BATCH_USERS = 1000
MAX_BATCH_ITEMS = 100_000   # users x k per RecommendBatch (recommender_service.servicer.MAX_BATCH_ITEMS)
MAX_JOB_ID = 128
MAX_PATH = 1024
MAX_LIST_LIMIT = 1000
from trainer_service.hyperparams import MODEL_KINDS  # noqa: E402 - the trainer's own list

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)

# --------------------------------------------------------------------------- the served model

ARTIFACT = tiny_artifact()
MOVIE_IDS = [int(m) for m in ARTIFACT.movie_ids.tolist()]
USER_IDS = [str(u) for u in ARTIFACT.user_ids.tolist()]
SEEN = {
    user: {MOVIE_IDS[i] for i in ARTIFACT.seen_indices[ARTIFACT.seen_indptr[n]:ARTIFACT.seen_indptr[n + 1]].tolist()}
    for n, user in enumerate(USER_IDS)
}
TITLES = dict(zip(MOVIE_IDS, ARTIFACT.titles.tolist()))

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
def recommend_requests(draw):
    request = recommender_pb2.RecommendRequest(user_id=draw(user_ids), k=draw(ks),
                                               recent_movie_ids=draw(recent_movie_lists()))
    exclude = draw(optional(st.booleans()))
    if exclude is not None:
        request.exclude_seen = exclude
    return request


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
    return request


similar_items_requests = st.builds(
    recommender_pb2.SimilarItemsRequest,
    movie_id=st.one_of(int64s(*MOVIE_IDS, MOVIE_IDS[0] - 1, MOVIE_IDS[-1] + 1), st.sampled_from(MOVIE_IDS)),
    k=ks,
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
TRAIN_PARTS = ("model", "epochs", "key", "dataset", "hyperparameters", "evaluation", "quality_gate")


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
    request.quality_gate.disabled = draw(st.booleans())
    return request


def job_ids(known: list[str]) -> st.SearchStrategy[str]:
    """Fuzzed ids plus, drawn lazily, ids of jobs that really exist (and near misses of them)."""
    real = st.integers(0, 10**6).map(lambda i: known[i % len(known)])
    near = st.builds(lambda job, affix: job + affix if affix != "-1" else job[:-1],
                     real, st.sampled_from(["\x00", " ", "x", "-1", "/", "é"]))
    return st.one_of(real, near, texts("job-", "job-000000000000"))


KNOWN_JOBS: list[str] = []   # every job id the trainer has accepted in this module
DONE_JOBS: list[str] = []    # the ones known to be finished (safe to watch)
KEYS_USED: dict[str, str] = {}  # idempotency key -> job id

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
    tolerated deadline or an oversized request)."""
    assert server.alive(), f"{rpc}: the server process died (exit code {server.process.returncode}); see {server.log_path}"
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


    paths = (request.dataset.ratings_path, request.dataset.items_path)
    if (code == Code.UNKNOWN and details.startswith("Exception calling application:")
            and any(text in details for text in OS_PATH_ERRORS) and any(_path_trips_the_os(p) for p in paths)):
        return "train-path-oserror"
    echoed = max(len(request.model), len(request.evaluation.holdout), *map(len, paths))
    too_long = (code == Code.RESOURCE_EXHAUSTED and "metadata size exceeds" in details) or (
        code != Code.OK and grpc_message_bytes(details) > MAX_MESSAGE_BYTES)
    if too_long and echoed * 3 > MAX_MESSAGE_BYTES // 4:
        return "train-error-echoes-input"
    return None


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
    server = start_trainer(base / "models", base, "--data-root", str(data_root), "--queue-size", "2",
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
           "base": base}
    channel.close()
    server.terminate()


@pytest.fixture(scope="module")
def recommender(tmp_path_factory):
    from trainer_service.publisher import publish

    base = tmp_path_factory.mktemp("fuzz-recommender")
    model_root = base / "models"
    encoder = QueryEncoder((Part(POOLED, ARTIFACT.user_vectors.shape[1]),))  # sessions: the mean of their movies
    version = publish(str(model_root), ARTIFACT, {"model_kind": "test", METADATA_KEY: encoder.to_json()})
    server = start_recommender(model_root, base)
    with RecommenderClient(server.address, timeout=10) as client:
        client.wait_until_serving(timeout=120)
    channel = grpc.insecure_channel(server.address)
    yield {"server": server, "channel": channel, "caller": Caller(channel, "movierec.v1.Recommender"),
           "version": version}
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


# --------------------------------------------------------------------------- answers that must be right


def check_items(items, k: int, *, user: str | None, exclude_seen: bool, cold_start: bool,
                recent: tuple[int, ...] = ()) -> None:
    """``recent``: the request's session movies that the model knows."""
    ids = [item.movie_id for item in items]
    assert len(ids) == len(set(ids)), f"duplicate movies: {ids}"
    assert set(ids) <= set(MOVIE_IDS), f"movies the model does not know: {set(ids) - set(MOVIE_IDS)}"
    for item in items:
        assert item.title == TITLES[item.movie_id]
        assert math.isfinite(item.score), item
    scores = [item.score for item in items]
    assert scores == sorted(scores, reverse=True), f"not best first: {scores}"
    known = user in SEEN
    assert cold_start == (not known and not recent), f"cold_start={cold_start} for user {user!r}"
    excluded = (SEEN[user] if known else set()) | set(recent) if exclude_seen else set()
    assert not set(ids) & excluded, f"seen or session movies recommended to {user}: {set(ids) & excluded}"
    if known or recent:
        assert len(ids) == min(k, len(MOVIE_IDS) - len(excluded))
    else:
        assert len(ids) == min(k, len(MOVIE_IDS))


def bad_user_id(user_id: str) -> bool | None:
    """True: must be refused; None: whitespace only (refusing is fine, so is answering)."""
    if not user_id or len(user_id.encode("utf-8")) > MAX_USER_ID_BYTES:
        return True
    return None if not user_id.strip() else False


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
    assert len(response.items) == 5
    check_items(response.items, 5, user=user, exclude_seen=True, cold_start=response.cold_start)
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
    started = time.monotonic()

    @FUZZ_SETTINGS
    @given(payloads(recommend_requests()), deadlines())
    def fuzz(payload, timeout):
        request, data = payload
        code, details, response, _ = caller.unary("Recommend", data, recommender_pb2.RecommendResponse, timeout)
        if not check_status("Recommend", server, code, details, timeout, malformed=not parses(data, recommender_pb2.RecommendRequest)):
            return
        request = request or recommender_pb2.RecommendRequest.FromString(data)
        must_refuse = bad_user_id(request.user_id)
        if not 1 <= request.k <= MAX_K or len(request.recent_movie_ids) > MAX_RECENT_MOVIES:
            must_refuse = True
        if must_refuse is True:
            assert code == Code.INVALID_ARGUMENT, f"{code.name} for {request!r:.300}"
        elif must_refuse is False:
            assert code == Code.OK, f"{code.name} {details!r} for a valid request {request!r:.300}"
        if code == Code.OK:
            assert response.model_version == recommender["version"]
            exclude = request.exclude_seen if request.HasField("exclude_seen") else True
            recent = list(request.recent_movie_ids)
            unknown = list(dict.fromkeys(m for m in recent if m not in TITLES))
            assert list(response.unknown_movie_ids) == unknown, (list(response.unknown_movie_ids), unknown)
            check_items(response.items, request.k, user=request.user_id, exclude_seen=exclude,
                        cold_start=response.cold_start, recent=tuple(m for m in recent if m in TITLES))

    fuzz()
    TIMINGS["Recommend"] = time.monotonic() - started
    assert_recommender_healthy(recommender)


def test_fuzz_recommend_batch(recommender):
    caller, server = recommender["caller"], recommender["server"]
    started = time.monotonic()

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
        verdicts = [bad_user_id(u) for u in request.user_ids]
        if (not request.user_ids or len(request.user_ids) > MAX_BATCH_USERS or True in verdicts
                or not 1 <= request.k <= MAX_K or len(request.user_ids) * request.k > MAX_BATCH_ITEMS):
            assert code == Code.INVALID_ARGUMENT, f"{code.name} for {len(request.user_ids)} users, k={request.k}"
        elif None not in verdicts:
            assert code == Code.OK, f"{code.name} {details!r} for {len(request.user_ids)} valid users, k={request.k}"
        if code == Code.OK:
            assert response.model_version == recommender["version"]
            assert [r.user_id for r in response.results] == list(request.user_ids), "results not in request order"
            exclude = request.exclude_seen if request.HasField("exclude_seen") else True
            for result in response.results:
                check_items(result.items, request.k, user=result.user_id, exclude_seen=exclude,
                            cold_start=result.cold_start)

    fuzz()
    TIMINGS["RecommendBatch"] = time.monotonic() - started
    assert_recommender_healthy(recommender)


def test_fuzz_similar_items(recommender):
    caller, server = recommender["caller"], recommender["server"]
    started = time.monotonic()

    @FUZZ_SETTINGS
    @given(payloads(similar_items_requests), deadlines())
    def fuzz(payload, timeout):
        request, data = payload
        code, details, response, _ = caller.unary("SimilarItems", data, recommender_pb2.SimilarItemsResponse, timeout)
        malformed = not parses(data, recommender_pb2.SimilarItemsRequest)
        if not check_status("SimilarItems", server, code, details, timeout, malformed=malformed):
            return
        request = request or recommender_pb2.SimilarItemsRequest.FromString(data)
        k_ok = 1 <= request.k <= MAX_K
        known = request.movie_id in TITLES
        if not k_ok:
            assert code in (Code.INVALID_ARGUMENT, Code.NOT_FOUND) if not known else code == Code.INVALID_ARGUMENT, \
                f"{code.name} for k={request.k}"
        elif not known:
            assert code == Code.NOT_FOUND, f"{code.name} {details!r} for unknown movie {request.movie_id}"
            assert str(request.movie_id) in details, details
        else:
            assert code == Code.OK, f"{code.name} {details!r} for {request!r}"
        if code == Code.OK:
            assert response.model_version == recommender["version"]
            assert (response.movie.movie_id, response.movie.title) == (request.movie_id, TITLES[request.movie_id])
            ids = [item.movie_id for item in response.items]
            assert request.movie_id not in ids
            assert len(ids) == len(set(ids)) == min(request.k, len(MOVIE_IDS) - 1)
            scores = [item.score for item in response.items]
            assert scores == sorted(scores, reverse=True)
            assert all(-1.0001 <= s <= 1.0001 for s in scores), scores  # cosine

    fuzz()
    TIMINGS["SimilarItems"] = time.monotonic() - started
    assert_recommender_healthy(recommender)


def test_fuzz_get_model_status(recommender):
    caller, server = recommender["caller"], recommender["server"]
    started = time.monotonic()

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

    fuzz()
    TIMINGS["GetModelStatus"] = time.monotonic() - started
    assert_recommender_healthy(recommender)


# --------------------------------------------------------------------------- trainer fuzz


def test_fuzz_train(trainer):
    caller, server = trainer["caller"], trainer["server"]
    pending: list[str] = []   # accepted and not cancelled yet
    started = time.monotonic()

    @FUZZ_SETTINGS
    @given(payloads(train_requests()), deadlines())
    def fuzz(payload, timeout):
        request, data = payload
        code, details, job, _ = caller.unary("Train", data, trainer_pb2.TrainJob, timeout)
        if code == Code.DEADLINE_EXCEEDED:
            lost_calls[0] += 1  # the client gave up; the server may still have queued the job
        malformed = not parses(data, trainer_pb2.TrainRequest)
        request = request or (None if malformed else trainer_pb2.TrainRequest.FromString(data))
        if not check_status("Train", server, code, details, timeout, malformed=malformed):
            return
        if (request.model not in MODEL_KINDS or len(request.idempotency_key) > MAX_JOB_ID
                or max(len(request.dataset.ratings_path), len(request.dataset.items_path)) > MAX_PATH
                or bool(request.dataset.ratings_path) != bool(request.dataset.items_path)):
            assert code == Code.INVALID_ARGUMENT, f"{code.name} for {request!r:.400}"
        if code == Code.ALREADY_EXISTS:
            assert request.idempotency_key in KEYS_USED, f"ALREADY_EXISTS for a new key: {request!r:.400}"
            assert KEYS_USED[request.idempotency_key] in details, details
        if code == Code.RESOURCE_EXHAUSTED:
            # The queue is full; empty it so the next valid requests get in (and CPU stays free).
            for job_id in pending:
                _cancel(caller, job_id)
            pending.clear()
        if code == Code.OK:
            assert job.id.startswith("job-"), job.id
            assert job.request.model == request.model
            assert job.request.idempotency_key == request.idempotency_key
            if request.idempotency_key in KEYS_USED:
                assert job.id == KEYS_USED[request.idempotency_key], "the same key returned a different job"
            else:
                # A key first sent by a call whose deadline expired may name a job that already ran.
                assert job.state == trainer_pb2.TrainJob.QUEUED or lost_calls[0], job
                assert job.id not in KNOWN_JOBS
                KNOWN_JOBS.append(job.id)
                if request.idempotency_key:
                    KEYS_USED[request.idempotency_key] = job.id
                pending.append(job.id)

    lost_calls = [0]
    try:
        fuzz()
    finally:
        for job_id in pending:
            _cancel(caller, job_id)
    TIMINGS["Train"] = time.monotonic() - started
    # Jobs queued by calls whose client deadline expired first: at most one per such call.
    code, details, listed, _ = caller.unary("ListJobs", trainer_pb2.ListJobsRequest(limit=MAX_LIST_LIMIT).SerializeToString(),
                                            trainer_pb2.ListJobsResponse)
    assert code == Code.OK, (code, details)
    on_server = [j.id for j in listed.jobs]
    assert set(KNOWN_JOBS) <= set(on_server), "a job the trainer accepted is missing from ListJobs"
    unseen = [job_id for job_id in on_server if job_id not in KNOWN_JOBS]
    assert len(unseen) <= lost_calls[0], (unseen, lost_calls[0])
    KNOWN_JOBS.extend(unseen)
    # Every accepted job ends (cancelled, or failed fast for want of MovieLens); none hangs the worker.
    for job_id in KNOWN_JOBS:
        job = _wait_done(caller, job_id, timeout=180)
        if job_id not in DONE_JOBS:
            DONE_JOBS.append(job_id)
        assert job.state in (trainer_pb2.TrainJob.FAILED, trainer_pb2.TrainJob.CANCELLED,
                             trainer_pb2.TrainJob.SUCCEEDED), job
        if job.state == trainer_pb2.TrainJob.FAILED:
            assert job.error.strip(), job
    assert_trainer_healthy(trainer)


def test_fuzz_get_job(trainer):
    caller, server = trainer["caller"], trainer["server"]
    started = time.monotonic()

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

    fuzz()
    TIMINGS["GetJob"] = time.monotonic() - started
    assert_trainer_healthy(trainer)


def expected_job_code(job_id: str):
    if not job_id or len(job_id) > MAX_JOB_ID:
        return Code.INVALID_ARGUMENT
    return Code.OK if job_id in KNOWN_JOBS else Code.NOT_FOUND


def test_fuzz_list_jobs(trainer):
    caller, server = trainer["caller"], trainer["server"]
    started = time.monotonic()

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

    fuzz()
    TIMINGS["ListJobs"] = time.monotonic() - started
    assert_trainer_healthy(trainer)


def test_fuzz_watch_job(trainer):
    caller, server = trainer["caller"], trainer["server"]
    started = time.monotonic()

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
            assert seconds < 2.0, f"refusing {request.job_id!r:.100} took {seconds:.1f}s"

    fuzz()
    TIMINGS["WatchJob"] = time.monotonic() - started
    assert_trainer_healthy(trainer)


def test_fuzz_cancel_job(trainer):
    caller, server = trainer["caller"], trainer["server"]
    before = {}
    for job_id in DONE_JOBS:
        _, _, job, _ = caller.unary("GetJob", trainer_pb2.GetJobRequest(job_id=job_id).SerializeToString(),
                                    trainer_pb2.TrainJob)
        before[job_id] = job
    started = time.monotonic()

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

    fuzz()
    TIMINGS["CancelJob"] = time.monotonic() - started
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
    assert job.published and job.model_version >= 1, job
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
    ("trainer", "movierec.v1.Trainer", "Train", trainer_pb2.TrainRequest, trainer_pb2.TrainJob, False),
    ("trainer", "movierec.v1.Trainer", "GetJob", trainer_pb2.GetJobRequest, trainer_pb2.TrainJob, False),
    ("trainer", "movierec.v1.Trainer", "ListJobs", trainer_pb2.ListJobsRequest, trainer_pb2.ListJobsResponse, False),
    ("trainer", "movierec.v1.Trainer", "WatchJob", trainer_pb2.GetJobRequest, trainer_pb2.TrainJob, True),
    ("trainer", "movierec.v1.Trainer", "CancelJob", trainer_pb2.CancelJobRequest, trainer_pb2.TrainJob, False),
]


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
        model="ease", dataset=trainer_pb2.DatasetSpec(**dataset), evaluation=trainer_pb2.EvaluationSpec(holdout_size=2)))
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
