"""Movie metadata end to end: a real trainer publishes genres and years with each version, a real
recommender answers with them, GetModelStatus counts them, the CLI shows them, and a version
written before metadata existed still serves (with none).

The oracles read the source files with plain Python (``csv``, ``str.split``), never with the
trainer's parsers, so a parsing mistake cannot agree with itself.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from clients import RecommenderClient, TrainerClient
from clients.cli import main as cli
from movierec_common.artifact import VersionMetadata, write_version
from movierec_common.model_root import TMP_PREFIX
from tests.artifacts import tiny_artifact
from tests.servers import start_recommender, start_trainer
from tests.waiting import wait_for_version
from trainer_service import synth

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- oracles, plain Python


def ml_100k_oracle(folder: Path) -> tuple[list[str], dict[int, tuple[list[str], int]]]:
    """(genre names in u.genre order without "unknown", {movie id: (genres, year)}) from u.genre and u.item."""
    names = [line.split("|")[0] for line in (folder / "u.genre").read_text(encoding="latin-1").splitlines() if line]
    movies = {}
    for line in (folder / "u.item").read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        flags = fields[5:24]
        genres = [name for name, flag in zip(names, flags, strict=True) if flag == "1" and name != "unknown"]
        date = fields[2].strip()
        movies[int(fields[0])] = (genres, int(date.split("-")[-1]) if date else 0)
    return [n for n in names if n != "unknown"], movies


def csv_oracle(path: Path) -> tuple[list[str], dict[int, tuple[list[str], int]]]:
    movies, names = {}, set()
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            genres = [] if row["genres"] == "(no genres listed)" else sorted(row["genres"].split("|"))
            names.update(genres)
            title = row["title"].rstrip()
            year = int(title[-5:-1]) if len(title) > 6 and title[-6] == "(" and title[-1] == ")" \
                and title[-5:-1].isdigit() else 0
            movies[int(row["movieId"])] = (genres, year)
    return sorted(names), movies


def counts_of(names: list[str], movies: dict[int, tuple[list[str], int]]) -> list[tuple[str, int]]:
    return [(name, sum(name in genres for genres, _ in movies.values())) for name in names]


def check_items(items, movies: dict[int, tuple[list[str], int]]) -> None:
    assert items
    for item in items:
        genres, year = movies[item.movie_id]
        assert (list(item.genres), item.year) == (genres, year or None), item


def check_every_answer(rc: RecommenderClient, version: int, movies, user_ids: list[str], a_movie: int) -> None:
    """Recommend (ranked and live), RecommendBatch, SimilarItems and a session all carry the facts."""
    for user in user_ids[:5]:
        recs = rc.recommend(user, k=10)
        assert recs.model_version == version
        check_items(recs.items, movies)
        check_items(rc.recommend(user, k=300, exclude_seen=False).items, movies)  # the live path
    check_items(rc.recommend("nobody-at-all", k=10).items, movies)  # cold start: the popularity list
    batch = rc.recommend_batch(user_ids, k=10)
    for result in batch:
        check_items(result.items, movies)
    similar = rc.similar_items(a_movie, k=10)
    check_items([similar.movie, *similar.items], movies)
    session = rc.recommend("a-visitor", k=10, recent=[a_movie])
    assert not session.cold_start
    check_items(session.items, movies)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, movielens_dir):
    base = tmp_path_factory.mktemp("metadata")
    data_root = base / "data"
    synth.write(synth.synthesize(400, 600, 12_000, seed=5), data_root)
    model_root = base / "models"
    trainer = start_trainer(model_root, base, "--data-root", str(data_root),
                            env={"MOVIELENS_DIR": str(movielens_dir)})
    recommender = None
    try:
        recommender = start_recommender(model_root, base)
        with TrainerClient(trainer.address, timeout=30) as tc, RecommenderClient(recommender.address,
                                                                                  timeout=30) as rc:
            yield {"tc": tc, "rc": rc, "model_root": model_root, "data_root": data_root,
                   "address": recommender.address}
    finally:
        trainer.terminate()
        if recommender is not None:
            recommender.terminate()


def _train_and_serve(stack, version: int, **options) -> None:
    tc, rc = stack["tc"], stack["rc"]
    job = tc.wait_for_job(tc.train("ease", **options).id, timeout=600)
    assert job.state == "SUCCEEDED" and job.model_version == version, job.error
    wait_for_version(rc, version, timeout=120)


def test_movielens_100k_answers_carry_genres_and_years_from_u_item(stack, movielens_dir, capsys, monkeypatch):
    _train_and_serve(stack, 1)
    names, movies = ml_100k_oracle(movielens_dir)
    rc = stack["rc"]
    users = sorted({line.split("\t")[0] for line in (movielens_dir / "u.data").read_text().splitlines()}, key=int)
    check_every_answer(rc, 1, movies, users[:40], a_movie=50)
    status = rc.model_status()
    assert [(g.name, g.movies) for g in status.genres] == counts_of(names, movies)
    assert len(status.genres) == 18 and status.genres[0].name == "Action"
    metadata = json.loads((stack["model_root"] / "1" / "metadata.json").read_text())
    record = metadata["movies"]
    assert record["genres"] == names and {record["genres_file"], record["years_file"]} <= set(metadata["files"])

    # The CLI shows them: the status's genre counts, each answer's year and genres, and in --json.
    monkeypatch.setenv("MOVIEREC_RECOMMENDER", stack["address"])
    assert cli(["status"]) == 0
    out = capsys.readouterr().out
    drama = dict(counts_of(names, movies))["Drama"]
    assert re.search(rf"genres \(18\):.*Drama {drama}\b", out), out
    assert cli(["similar", "50", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "Star Wars (1977)" in out and re.search(r"\b1977\b.*Action, Adventure, Romance, Sci-Fi, War", out), out
    assert cli(["recommend", "42", "-k", "5", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    for item in answer["items"]:
        genres, year = movies[item["movie_id"]]
        assert item["genres"] == genres and item["year"] == (year or None)
    assert cli(["status", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(g["name"], g["movies"]) for g in shown["genres"]] == counts_of(names, movies)


def test_a_movies_csv_dataset_answers_with_its_genres_and_title_years(stack):
    _train_and_serve(stack, 2, ratings_path="ratings.csv", items_path="movies.csv")
    names, movies = csv_oracle(stack["data_root"] / "movies.csv")
    assert any(not genres for genres, _ in movies.values())  # "(no genres listed)" is in the data
    rc = stack["rc"]
    check_every_answer(rc, 2, movies, [str(u) for u in range(1, 41)], a_movie=next(iter(movies)))
    assert [(g.name, g.movies) for g in rc.model_status().genres] == counts_of(names, movies)


def test_a_version_written_before_metadata_serves_with_none(stack, capsys, monkeypatch):
    root, rc = stack["model_root"], stack["rc"]
    staging = root / f"{TMP_PREFIX}3-old"
    art = tiny_artifact()
    write_version(str(staging), art, VersionMetadata(model_kind="ease"))  # the old way: no side arrays
    assert "movies" not in json.loads((staging / "metadata.json").read_text())
    assert not [name for name in json.loads((staging / "metadata.json").read_text())["files"] if ".npy" in name]
    staging.rename(root / "3")
    wait_for_version(rc, 3, timeout=120)
    recs = rc.recommend(art.user_ids[0], k=5)
    assert recs.model_version == 3 and len(recs.items) == 5
    assert all(item.genres == () and item.year is None for item in recs.items)
    similar = rc.similar_items(int(art.movie_ids[0]), k=3)
    assert similar.movie.genres == () and all(i.year is None for i in similar.items)
    status = rc.model_status()
    assert status.served_version == 3 and status.genres == []
    monkeypatch.setenv("MOVIEREC_RECOMMENDER", stack["address"])
    assert cli(["status"]) == 0
    assert "genres: none (the served version has no movie metadata; retrain)" in capsys.readouterr().out
