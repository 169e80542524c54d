"""A loaded version keeps the answers it gives (recommender_service.answers), and only those it may."""

from __future__ import annotations

import numpy as np
import pytest

from movierec_common.artifact import VersionMetadata
from movierec_common.session_query import pooled_encoder
from recommender_service.answers import AnswerCache
from recommender_service.errors import SessionsUnsupported
from recommender_service.model import LoadedModel
from recommender_service.retrieval import Retriever
from tests.artifacts import tiny_artifact


class Rendering:
    """The servicer's part, counted: turns a ranked answer into the caller's form."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model, result):
        self.calls += 1
        return (model.version, [item.movie_id for item in result.items], result.cold_start,
                list(result.unknown_movie_ids))


def loaded(version: int, art, **retriever_args) -> LoadedModel:
    return LoadedModel(version=version, retriever=Retriever(art, **retriever_args), metadata=VersionMetadata(),
                       loaded_at=0.0)


def test_a_version_renders_each_answer_once_and_a_new_version_starts_empty():
    art = tiny_artifact()
    model, render = loaded(1, art), Rendering()
    user = str(art.user_ids[3])

    first = model.recommend(user, 10, True, render)
    again = model.recommend(user, 10, True, render)
    assert again is first and render.calls == 1  # a hit is the very object rendered before
    assert first == render(model, model.retriever.recommend(user, 10, True))
    model.recommend(user, 10, False, render)
    model.recommend(user, 5, True, render)
    assert render.calls == 1 + 1 + 2 and len(model.answers) == 3  # k and exclude_seen are part of the key

    newer = loaded(2, art)
    assert newer.recommend(user, 10, True, render)[0] == 2
    assert len(newer.answers) == 1 and render.calls == 5


def test_the_cache_is_bounded_and_answers_past_the_bound_are_still_right():
    art = tiny_artifact()
    model = LoadedModel(version=1, retriever=Retriever(art), metadata=VersionMetadata(), loaded_at=0.0,
                        answers=AnswerCache(limit=4))
    render = Rendering()
    users = [str(u) for u in art.user_ids[:10]]
    answers = [model.recommend(u, 10, True, render) for u in users]
    assert len(model.answers) == 4
    assert [model.recommend(u, 10, True, render) for u in users] == answers
    assert render.calls == 10 + 6  # the first four were kept, the other six are ranked and rendered again


def test_sessions_are_never_kept():
    art = tiny_artifact()
    encoder = pooled_encoder(art.user_vectors, art.item_vectors, (art.seen_indptr, art.seen_indices))
    model, render = loaded(1, art, query_encoder=encoder), Rendering()
    recent = art.movie_ids[:3].tolist()
    first = model.recommend("visitor", 10, True, render, recent)
    second = model.recommend("visitor", 10, True, render, np.array(recent))
    assert first == second and render.calls == 2 and len(model.answers) == 0

    without_encoder = loaded(1, art)
    with pytest.raises(SessionsUnsupported):
        without_encoder.recommend("visitor", 10, True, render, recent)
