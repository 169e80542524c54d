"""FaissIVF.top_k_batch (the precomputed rankings) against FaissIVF.top_k (the live path), row by row.

A ranking served from the table must be the answer the live path would give, bit for bit: the same
movies in the same order, the same float32 scores, the same count. The catalogue is a real faiss IVF
whose vectors hold exact duplicates (ties, some across the k-th place), and the users' seen lists
range from none through lists of their own best movies (the over-fetch runs short) to lists long
enough that the live path hands them to the planner, and everything. k = 7 is not a multiple of
four, where the BLAS product's bits depend on how many candidates are scored.
"""

from __future__ import annotations

import numpy as np
import pytest

from movierec_common import ann_index
from recommender_service.filtered_ivf import LARGE_EXCLUDE
from recommender_service.top_k import FaissIVF

N, DIM, COPIES, USERS = 20_000, 16, 2_000, 150


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(21)
    items = rng.standard_normal(size=(N, DIM), dtype=np.float32)
    items[N - COPIES:] = items[rng.choice(N - COPIES, size=COPIES, replace=False)]
    items = items[rng.permutation(N)]  # copies land both below and above their originals
    users = rng.standard_normal(size=(USERS, DIM), dtype=np.float32)
    seen = []
    for user in range(USERS):
        kind = user % 6
        if kind == 0:
            size = 0
        elif kind in (1, 2):
            size = int(rng.integers(1, 60))
        elif kind == 3:
            size = int(rng.integers(100, LARGE_EXCLUDE + 1))
        elif kind == 4:  # the user's own best movies: the first over-fetch comes back short
            size = int(rng.integers(150, 600))
            seen.append(np.sort(np.argsort(-(items @ users[user]), kind="stable")[:size]).astype(np.int32))
            continue
        else:  # more than the planner's threshold, up to everything
            size = int(rng.choice([LARGE_EXCLUDE + 1, 3_000, N - 3, N]))
        seen.append(np.sort(rng.choice(N, size=size, replace=False)).astype(np.int32))
    return items, users, seen


@pytest.fixture(scope="module")
def backend(data) -> FaissIVF:
    items = data[0]
    index, params = ann_index.build(items, nlist=128, nprobe=8, threads=1)
    served = ann_index.deserialize(ann_index.serialize(index), params, N, DIM)
    return FaissIVF(served, np.linalg.norm(items, axis=1).astype(np.float32), params.max_first_fetch)


@pytest.mark.parametrize("k", [1, 7, 100])
def test_every_batched_row_is_the_live_answer_bit_for_bit(backend, data, k, monkeypatch):
    items, users, seen = data
    indptr = np.concatenate([[0], np.cumsum([s.size for s in seen])]).astype(np.int64)
    live_calls = []
    live = backend.top_k

    def counted(query: np.ndarray, kk: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        live_calls.append(kk)
        return live(query, kk, exclude)

    monkeypatch.setattr(backend, "top_k", counted)  # counts the rows the batch hands to the live path
    indices, scores, counts = backend.top_k_batch(users, k, indptr, np.concatenate(seen))
    monkeypatch.undo()

    ties_at_the_cut = 0
    for user in range(USERS):
        found, values = backend.top_k(users[user], k, seen[user])
        n = counts[user]
        assert n == found.size == min(k, N - seen[user].size), user
        np.testing.assert_array_equal(indices[user, :n], found, err_msg=f"user {user}")
        np.testing.assert_array_equal(scores[user, :n].view(np.int32), values.view(np.int32), err_msg=f"user {user}")
        if N - seen[user].size > k:
            exact = items @ users[user]
            exact[seen[user]] = -np.inf
            kth, after = -np.partition(-exact, (k - 1, k))[k - 1:k + 1]
            ties_at_the_cut += bool(kth == after)
    planned = sum(s.size > LARGE_EXCLUDE for s in seen)
    # The batch answered most rows itself (the rest, the planner's and the unsure, came from top_k) ...
    assert planned <= len(live_calls) < USERS // 3, len(live_calls)
    # ... and the data does what it is for: exact duplicates straddle the k-th place for some users.
    assert k == 1 or ties_at_the_cut >= 3, ties_at_the_cut


def test_the_live_paths_partial_ranking_is_the_head_of_the_full_one():
    """top_k sorts only the head of a widened candidate list (_ranked_head): the same first m as a full
    sort, ties (score down, then index up) and non-finite scores included."""
    from recommender_service.top_k import _ranked, _ranked_head

    rng = np.random.default_rng(5)
    for trial in range(40):
        n = int(rng.integers(1, 3_000))
        indices = rng.permutation(N)[:n]
        scores = rng.integers(-20, 20, size=n).astype(np.float32) / 4  # many exact ties
        if trial % 4 == 1:
            scores[rng.integers(0, n, size=3)] = np.nan
        if trial % 4 == 2:
            scores[rng.integers(0, n, size=3)] = -np.inf
        if trial % 4 == 3:
            scores[(scores == 0) & (np.arange(n) % 2 == 0)] = -0.0  # equal to 0.0, other bits
        full_indices, full_scores = _ranked(indices, scores)
        for m in (1, 7, 101, n):
            head_indices, head_scores = _ranked_head(indices, scores, m)
            np.testing.assert_array_equal(head_indices, full_indices[:m])
            np.testing.assert_array_equal(head_scores.view(np.int32), full_scores[:m].view(np.int32))
