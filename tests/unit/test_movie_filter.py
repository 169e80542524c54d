"""The filter's domain: limits checked when parsed, genres and years resolved per version, and a
Retriever answering a restricted call the same way from its precomputed rankings, live, and for a
cold start, with hidden movies among the exclusions.

Oracles here are plain Python loops over the arrays the test made (not ``MovieMetadata.matching``).
"""

from __future__ import annotations

import numpy as np
import pytest

from movierec_common.movie_metadata import MovieMetadata
from recommender_service.errors import FilterNeedsMetadata, InvalidRequest
from recommender_service.movie_filter import MovieFilter, SubsetCache, resolve
from recommender_service.rankings import Rankings
from recommender_service.retrieval import Retriever
from tests.artifacts import tiny_artifact

NAMES = ("Action", "Comedy", "Drama", "Horror")


def metadata(items: int, seed: int = 0) -> MovieMetadata:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 16, size=items).astype(np.uint64)
    years = rng.integers(1980, 2001, size=items).astype(np.int16)
    years[::7] = 0
    return MovieMetadata.build(NAMES, bits, years)


def plain_passes(movies: MovieMetadata, i: int, f: MovieFilter) -> bool:
    genres = {name for g, name in enumerate(NAMES) if int(movies.genre_bits[i]) >> g & 1}
    year = int(movies.years[i])
    if f.genres_any and not genres & set(f.genres_any):
        return False
    if not set(f.genres_all) <= genres or genres & set(f.exclude_genres):
        return False
    if f.min_year or f.max_year:
        return year > 0 and (not f.min_year or year >= f.min_year) and (not f.max_year or year <= f.max_year)
    return True


def test_limits_are_checked_when_parsed_with_the_numbers():
    with pytest.raises(InvalidRequest, match="10,001 ids; at most 10,000"):
        MovieFilter.checked(exclude_movie_ids=np.arange(10_001))
    with pytest.raises(InvalidRequest, match="100,001 ids; at most 100,000"):
        MovieFilter.checked(only_movie_ids=np.arange(100_001))
    with pytest.raises(InvalidRequest, match="min_year 1999 is after filter.max_year 1990"):
        MovieFilter.checked(min_year=1999, max_year=1990)
    with pytest.raises(InvalidRequest, match="65 names; at most 64"):
        MovieFilter.checked(genres_all=[f"g{i}" for i in range(65)])
    assert MovieFilter.checked().is_empty and not MovieFilter.checked(min_year=1990).is_empty


def test_genre_and_year_conditions_resolve_to_the_movies_a_plain_loop_finds():
    movies = metadata(300)
    cache = SubsetCache()
    for f in (MovieFilter.checked(genres_any=["Comedy", "Horror"]), MovieFilter.checked(genres_all=["Action", "Drama"]),
              MovieFilter.checked(exclude_genres=["Drama"], min_year=1990),
              MovieFilter.checked(max_year=1985), MovieFilter.checked(genres_any=["Action"], min_year=1990,
                                                                      max_year=1990)):
        resolved = resolve(f, movies, lambda ids: ids, cache)
        want = [i for i in range(300) if plain_passes(movies, i, f)]
        assert resolved.subset is not None and resolved.subset.passing.tolist() == want
        again = resolve(MovieFilter.checked(genres_any=list(reversed(f.genres_any)), genres_all=f.genres_all,
                                            exclude_genres=f.exclude_genres, min_year=f.min_year,
                                            max_year=f.max_year), movies, lambda ids: ids, cache)
        assert again.subset is resolved.subset  # the same conditions share one cached subset


def test_unknown_genres_name_the_known_ones_and_a_version_without_metadata_refuses():
    with pytest.raises(InvalidRequest, match="no genre 'Musical'; its genres are: Action, Comedy, Drama, Horror"):
        resolve(MovieFilter.checked(genres_all=["Musical"]), metadata(10), lambda ids: ids)
    with pytest.raises(FilterNeedsMetadata):
        resolve(MovieFilter.checked(min_year=1990), MovieMetadata.none(10), lambda ids: ids)
    ids_only = resolve(MovieFilter.checked(exclude_movie_ids=[3, 99, 3], only_movie_ids=[1, 2, 3, 98]),
                       MovieMetadata.none(10), lambda ids: np.where(ids < 10, ids, -1))
    assert ids_only.exclude.tolist() == [3] and ids_only.subset is not None
    assert ids_only.subset.passing.tolist() == [1, 2, 3] and ids_only.unknown_movie_ids == [99, 98]


def _retriever(ranking_top: int) -> tuple[Retriever, MovieMetadata]:
    from recommender_service.catalogue import ServingCatalogue
    from recommender_service.top_k import BruteForce

    art = tiny_artifact(users=30, items=200, dim=8, seed=4)
    movies = metadata(200, seed=2)
    catalogue = ServingCatalogue.from_artifact(art, movies)
    top_k = BruteForce(art.item_vectors)
    return Retriever(catalogue, top_k, rankings=Rankings.compute(catalogue, top_k, top=ranking_top)), movies


def test_the_rankings_answer_a_filtered_call_only_when_they_hold_its_answer():
    """A shallow ranking (depth 12) and the live path must give the same filtered answers: from the
    ranking when k of its movies pass, live otherwise, never a short list while more pass."""
    shallow, movies = _retriever(12)
    deep, _ = _retriever(200)
    hidden = np.array([5, 17, 40], dtype=np.int64)
    for f in (MovieFilter.checked(genres_any=["Horror"]), MovieFilter.checked(genres_all=["Action", "Comedy"]),
              MovieFilter.checked(exclude_movie_ids=np.arange(101, 141), min_year=1995),
              MovieFilter.checked(only_movie_ids=np.arange(101, 301, 3))):
        for retriever in (shallow, deep):
            restriction = retriever.resolve(f, hidden)
            for user in range(30):
                user_id = str(user + 1)
                answer = retriever.recommend(user_id, 10, True, restriction)
                live = retriever.recommend_live(user, 10, True, restriction)
                assert [s.movie_id for s in answer.items] == [s.movie_id for s in live.items]
                assert answer.eligible_movies == live.eligible_movies
                seen = set(retriever.catalogue.seen_items(user).tolist())
                passing = [i for i in range(200) if plain_passes(movies, i, f) and i not in seen
                           and i not in set(hidden.tolist()) and 101 + i not in set(f.exclude_movie_ids.tolist())
                           and (not f.only_movie_ids.size or 101 + i in set(f.only_movie_ids.tolist()))]
                assert answer.eligible_movies == len(passing)
                assert len(answer.items) == min(10, len(passing))
                assert {s.movie_id - 101 for s in answer.items} <= set(passing)
            cold = retriever.recommend("nobody", 10, True, restriction)
            assert cold.cold_start and all(plain_passes(movies, s.movie_id - 101, f) for s in cold.items)
            popular = [i for i in retriever.catalogue.popular.tolist() if plain_passes(movies, i, f)
                       and i not in set(hidden.tolist()) and 101 + i not in set(f.exclude_movie_ids.tolist())
                       and (not f.only_movie_ids.size or 101 + i in set(f.only_movie_ids.tolist()))]
            assert [s.movie_id - 101 for s in cold.items] == popular[:10]
