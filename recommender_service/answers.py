"""The served version's answers, kept for the calls that repeat them.

An answer without a session is a pure function of (version, user, k,
exclude_seen), so the servicer keeps the answers the served version gives,
in the form the caller gets them (response messages): a hit skips ranking
and building the messages. That matters less for its ~10 us than for the GIL
hand-offs it saves when eight request threads share two cores.

What a caller may not do with it: the key is the caller's to choose, so an
unbounded cache is memory anyone can fill (measured: 20,000 calls with k from
901 to 1,000 over known users grew a recommender by 1.6 GB). Hence the cache
is bounded in bytes (``--answer-cache-mb``, least recently used out first),
and keeps only answers worth keeping: known users (an unknown user's answer
is the popularity list, built from a slice, and the ids are anyone's to
invent) and k up to :data:`MAX_CACHED_K` (the depth the rankings computed at
load answer; deeper answers are rare and large).

Answers die with their version and with the operators' hidden movies:
:class:`ServedAnswers` holds one :class:`AnswerCache` for the newest version
it has been asked about under one set of hidden rules, and drops it when a
newer version is served or the rules change, so no answer given before a
movie was hidden is handed out after. Sessions and filtered calls are never
kept: the movies just watched and the filters vary call by call (a filtered
call is answered from the rankings when they hold its answer, see
``retrieval.Retriever``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from movierec.v1 import recommender_pb2
from movierec_common import metrics
from recommender_service.movie_filter import NO_FILTER
from recommender_service.rankings import PRECOMPUTED_TOP
from recommender_service.top_k import NO_ITEMS

if TYPE_CHECKING:  # for annotations only: the servicer hands these in
    from recommender_service.model import LoadedModel
    from recommender_service.retrieval import Recommendation

DEFAULT_BUDGET_BYTES = 64 * 1024 * 1024
MAX_CACHED_K = PRECOMPUTED_TOP

# What holding one answer costs beyond its serialized size, measured in a
# fresh process holding thousands of RecommendResponse messages (upb) in a
# dict keyed as here: ~2.2 KB per entry (key, dict slot, message object, its
# arena) and ~50 bytes per item on top of its bytes on the wire. With these,
# the estimate is within 10% of the memory held for k = 10, 100 and 1,000 and
# for 30- and 300-byte titles (tests/unit/test_answers.py measures it again);
# the serialized size alone undercounts k = 10 seven times.
ENTRY_OVERHEAD_BYTES = 2_300
ITEM_OVERHEAD_BYTES = 50

Render = Callable[["LoadedModel", "Recommendation"], recommender_pb2.RecommendResponse]


def entry_bytes(answer: recommender_pb2.RecommendResponse) -> int:
    """The memory one kept answer costs, estimated from its message (see ENTRY_OVERHEAD_BYTES)."""
    return ENTRY_OVERHEAD_BYTES + ITEM_OVERHEAD_BYTES * len(answer.items) + answer.ByteSize()


class AnswerCache:
    """Answers by key, at most ``budget_bytes`` of them, the least recently used evicted first.

    A lock guards the order: a hit moves its entry, and two threads moving and
    evicting at once would corrupt an OrderedDict. It is held for a dict
    operation or two, never while an answer is built.
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.budget_bytes = budget_bytes
        self.nbytes = 0
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> Iterator[Hashable]:
        """The keys, least recently used first (a copy: safe while others call)."""
        with self._lock:
            return iter(list(self._entries))

    def get(self, key: Hashable) -> Any:
        """The kept answer (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, answer: Any, nbytes: int | None = None) -> None:
        """Keeps ``answer`` (``nbytes``: its cost, estimated from the message when not given), evicting
        the least recently used until it fits; one larger than the whole budget is not kept."""
        size = entry_bytes(answer) if nbytes is None else nbytes
        if size > self.budget_bytes:
            return
        with self._lock:
            replaced = self._entries.pop(key, None)
            if replaced is not None:
                self.nbytes -= replaced[1]
            while self.nbytes + size > self.budget_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.nbytes -= evicted
            self._entries[key] = (answer, size)
            self.nbytes += size


class ServedAnswers:
    """The answer cache of the version being served, for the servicer.

    A call names the version it uses from start to end (its LoadedModel); the
    newest version asked about (by load time) owns the cache. A call still on
    an older version is answered by it and kept nowhere, so a swap never mixes
    versions and an old call never throws the new version's answers away.
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._hidden: np.ndarray | None = None  # the hidden movie ids the cache's answers left out
        self._cache = AnswerCache(budget_bytes)

    @property
    def entries(self) -> int:
        return len(self._cache)

    @property
    def nbytes(self) -> int:
        return self._cache.nbytes

    def _cache_for(self, model: LoadedModel, hidden_movie_ids: np.ndarray) -> AnswerCache | None:
        """The cache of answers ``model`` gave under these hidden rules (the registry hands out one array
        per set of rules, so identity tells them apart); a change of either starts an empty one."""
        with self._lock:
            if model is self._model and hidden_movie_ids is self._hidden:
                return self._cache
            if self._model is not None and model.loaded_at < self._model.loaded_at:
                return None
            self._model, self._hidden, self._cache = model, hidden_movie_ids, AnswerCache(self.budget_bytes)
            metrics.answer_cache_bytes(0)
            return self._cache

    def recommend(self, model: LoadedModel, user_id: str, k: int, exclude_seen: bool, render: Render,
                  hidden_movie_ids: np.ndarray = NO_ITEMS) -> recommender_pb2.RecommendResponse:
        """``model``'s answer without a session or filter as ``render`` makes it, hidden movies left out,
        kept when worth keeping."""
        worth_keeping = k <= MAX_CACHED_K and model.retriever.knows_user(user_id)
        cache = self._cache_for(model, hidden_movie_ids) if worth_keeping and self.budget_bytes > 0 else None
        key = (user_id, k, exclude_seen)
        if cache is not None:
            kept = cache.get(key)
            if kept is not None:
                return kept
        restriction = model.restriction(NO_FILTER, hidden_movie_ids)
        answer = render(model, model.retriever.recommend(user_id, k, exclude_seen, restriction))
        if cache is not None:
            cache.put(key, answer)
            metrics.answer_cache_bytes(cache.nbytes)
        return answer
