"""Movie metadata (genres, release year) read from every GroupLens layout, on both parsing paths,
and stored beside a version as side arrays that serving reads back.

Expected values are written out by hand here (or read from the files with
plain Python in the synth test), never computed by the code under test.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from movierec_common import movie_metadata
from movierec_common.artifact import ArtifactError, MovieFactsRecord
from movierec_common.movie_metadata import MovieMetadata
from trainer_service import formats, synth
from trainer_service.data import load_movielens, load_ratings_files
from trainer_service.errors import DatasetError
from trainer_service.movie_facts import ML_100K_GENRES, read_genre_names

FLAG_NAMES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
              "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
              "Western")


def _flags(*names: str) -> str:
    return "|".join("1" if name in names else "0" for name in FLAG_NAMES)


def _genres(facts: MovieMetadata) -> list[tuple[str, ...]]:
    return [facts.genres_of(i) for i in range(len(facts.years))]


KIDS = "Children's"
U_ITEM = "\n".join([
    f"1|Toy Story (1995)|01-Jan-1995||http://x/1|{_flags('Animation', KIDS, 'Comedy')}",
    f"2|GoldenEye (1995)|4-Feb-1971||http://x/2|{_flags('Action', 'Adventure', 'Thriller')}",
    f"267|unknown||||{_flags('unknown')}",                          # ML-100K's movie with no facts at all
    f"1373|Good Morning (1971)|4-Feb-1971||http://x/1373|{_flags('unknown')}",
    f"5|Copycat (1995)|  |  |http://x/5|{_flags('unknown', 'Crime', 'Drama')}",  # unknown beside real genres
]) + "\n"


@pytest.mark.parametrize("path", ["fast", "slow"])
def test_ml_100k_flags_and_release_dates(path):
    content = U_ITEM.encode("latin-1")
    if path == "slow":  # spaces around an id: pyarrow refuses it, the line parser reads the file
        content = content.replace(b"\n2|", b"\n 2 |")
    movies = formats.parse_items(content, "u.item")
    facts = movies.facts
    assert facts.present
    assert facts.genre_names == FLAG_NAMES[1:]  # u.genre's order, "unknown" is no genre
    assert _genres(facts) == [("Animation", "Children's", "Comedy"), ("Action", "Adventure", "Thriller"), (), (),
                              ("Crime", "Drama")]
    assert facts.years.tolist() == [1995, 1971, 0, 1971, 0]
    assert facts.years.dtype == np.int16 and facts.genre_bits.dtype == np.uint64
    assert facts.genre_counts() == [(name, {"Animation": 1, KIDS: 1, "Comedy": 1, "Action": 1,
                                            "Adventure": 1, "Thriller": 1, "Crime": 1, "Drama": 1}.get(name, 0))
                                    for name in FLAG_NAMES[1:]]


def test_ml_100k_genre_names_come_from_u_genre():
    text = "\n".join(f"{name}|{i}" for i, name in enumerate(FLAG_NAMES)).replace(KIDS, "Kids") + "\n\n"
    names = read_genre_names(text.encode("latin-1"), "u.genre")
    assert names == tuple(n if n != KIDS else "Kids" for n in FLAG_NAMES)
    facts = formats.parse_items(U_ITEM.encode("latin-1"), "u.item", genre_names=names).facts
    assert facts.genres_of(0) == ("Animation", "Kids", "Comedy")
    assert ML_100K_GENRES == FLAG_NAMES
    with pytest.raises(DatasetError, match=r"u\.genre: .*19"):
        read_genre_names(b"unknown|0\nAction|1\n", "u.genre")


def test_a_bad_genre_flag_names_its_line():
    content = U_ITEM.replace(f"|{_flags('unknown')}\n", f"|{_flags('unknown')[:-1]}x\n", 1).encode("latin-1")
    with pytest.raises(DatasetError, match=r"u\.item:3: genre flag 19 \(Western\) is 'x'"):
        formats.parse_items(content, "u.item")


MOVIES_DAT = "\n".join([
    "1::Toy Story (1995)::Animation|Children's|Comedy",
    "2::Babylon 5 (1998– )::Sci-Fi",                 # a series: no single year
    "3::Sabrina (1995)  ::Comedy|Romance",            # trailing spaces after the year
    "4::Shawshank Redemption::Drama",                 # no year at all
    "5::1984 (1984)::(no genres listed)",
    "6::Heat (1995) (Director's Cut)::Action|Crime|Thriller",  # the year does not end the title
]) + "\n"


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
@pytest.mark.parametrize("path", ["fast", "slow"])
def test_movies_dat_genres_and_title_years(encoding, path):
    text = MOVIES_DAT if encoding == "utf-8" else MOVIES_DAT.replace("– ", "- ")
    content = text.encode(encoding)
    if path == "slow":
        content = content.replace(b"\n3::", b"\n 3 ::")
    facts = formats.parse_items(content, "movies.dat").facts
    assert facts.genre_names == ("Action", "Animation", "Children's", "Comedy", "Crime", "Drama", "Romance",
                                 "Sci-Fi", "Thriller")  # the documented GroupLens order: alphabetical
    assert _genres(facts) == [("Animation", "Children's", "Comedy"), ("Sci-Fi",), ("Comedy", "Romance"),
                              ("Drama",), (), ("Action", "Crime", "Thriller")]
    assert facts.years.tolist() == [1995, 0, 1995, 0, 1984, 0]


MOVIES_CSV = "\n".join([
    "movieId,title,genres",
    '11,"American President, The (1995)",Comedy|Drama|Romance',
    '12,"Dracula: Dead and Loving It, ""Again"" (1995)",Comedy|Horror',
    "13,Balto (1995) ,Adventure|Animation|Children",
    "14,Nixon,Drama",
    "15,Pirates (2010),(no genres listed)",
    '16,"Lost River, The (1994– )",IMAX|Drama',
]) + "\n"


@pytest.mark.parametrize("path", ["fast", "slow"])
def test_movies_csv_quoted_titles_no_genres_and_missing_years(path):
    content = MOVIES_CSV.encode()
    if path == "slow":
        content = content.replace(b"\n14,", b"\n 14 ,")
    movies = formats.parse_items(content, "movies.csv")
    assert movies.titles.tolist()[1] == 'Dracula: Dead and Loving It, "Again" (1995)'
    facts = movies.facts
    assert facts.genre_names == ("Adventure", "Animation", "Children", "Comedy", "Drama", "Horror", "IMAX",
                                 "Romance")
    assert _genres(facts) == [("Comedy", "Drama", "Romance"), ("Comedy", "Horror"), ("Adventure", "Animation",
                              "Children"), ("Drama",), (), ("Drama", "IMAX")]
    assert facts.years.tolist() == [1995, 1995, 1995, 0, 2010, 0]
    counts = dict(facts.genre_counts())
    assert counts == {"Adventure": 1, "Animation": 1, "Children": 1, "Comedy": 2, "Drama": 3, "Horror": 1,
                      "IMAX": 1, "Romance": 1}


def test_more_genres_than_a_version_holds_are_refused():
    lines = ["movieId,title,genres", *(f"{i},M{i} (2000),G{i:03d}" for i in range(1, 66))]
    with pytest.raises(DatasetError, match=r"movies\.csv: 65 distinct genres; at most 64"):
        formats.parse_items(("\n".join(lines) + "\n").encode(), "movies.csv")
    lines = lines[:-1]  # 64 fit: bit 63 is used
    facts = formats.parse_items(("\n".join(lines) + "\n").encode(), "movies.csv").facts
    assert len(facts.genre_names) == 64 and facts.genres_of(63) == ("G064",)


def test_the_synthetic_generators_genres_are_parsed_and_follow_its_clusters(tmp_path):
    data = synth.synthesize(300, 2000, 20_000, seed=3)
    files = synth.write(data, tmp_path)
    ratings = load_ratings_files(str(tmp_path), "ratings.csv", "movies.csv")
    with open(files.movies, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    expected = [tuple(sorted(r["genres"].split("|"))) if r["genres"] != "(no genres listed)" else () for r in rows]
    facts = ratings.facts
    assert facts is not None
    assert [facts.genres_of(i) for i in range(len(rows))] == expected
    by_cluster: dict[int, set[tuple[str, ...]]] = {}
    for cluster, genres in zip(data.movie_cluster.tolist(), expected, strict=True):
        if genres:
            by_cluster.setdefault(cluster, set()).add(genres)
    assert all(len(mixes) == 1 for mixes in by_cluster.values())  # one genre mix per taste cluster
    assert facts.years.min() >= 1920


def test_a_grouplens_copy_reads_u_genre(tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t5\t100\n1\t2\t3\t200\n")
    (tmp_path / "u.item").write_bytes(U_ITEM.encode("latin-1"))
    (tmp_path / "u.genre").write_text("\n".join(f"{n.upper()}|{i}" for i, n in enumerate(FLAG_NAMES)) + "\n")
    ratings, _ = load_movielens("", str(tmp_path))
    assert ratings.facts is not None and ratings.facts.genre_names[0] == "ACTION"


# --------------------------------------------------------------------------- stored beside a version


def test_side_arrays_round_trip_and_are_checked(tmp_path):
    facts = MovieMetadata.build(("Comedy", "Drama"), np.array([1, 3, 0], dtype=np.uint64),
                                np.array([1995, 0, 2001], dtype=np.int16))
    files, record = movie_metadata.files_for_version(facts)
    assert isinstance(record, MovieFactsRecord) and record.genres == ("Comedy", "Drama")
    assert set(files) == {record.genres_file, record.years_file}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    back = movie_metadata.read(str(tmp_path), record, 3)
    assert back.present and back.genre_names == ("Comedy", "Drama")
    assert back.genre_bits.tolist() == [1, 3, 0] and back.years.tolist() == [1995, 0, 2001]
    assert back.genre_counts() == [("Comedy", 2), ("Drama", 1)]
    with pytest.raises(ArtifactError, match="3 movies.*4"):
        movie_metadata.read(str(tmp_path), record, 4)
    buffer = io.BytesIO()
    np.save(buffer, np.array([1, 4, 0], dtype=np.uint64))  # bit 2: a genre the record does not name
    (tmp_path / record.genres_file).write_bytes(buffer.getvalue())
    with pytest.raises(ArtifactError, match="genre"):
        movie_metadata.read(str(tmp_path), record, 3)


def test_a_version_without_metadata_reads_as_none():
    facts = movie_metadata.read("/nonexistent", None, 5)
    assert not facts.present and facts.genre_names == () and facts.genre_counts() == []
    assert facts.genres_of(4) == () and facts.years.tolist() == [0] * 5
    files, record = movie_metadata.files_for_version(None)
    assert files == {} and record is None


def test_the_loader_serves_a_versions_metadata_and_refuses_it_unlisted_or_altered(tmp_path):
    import dataclasses
    import json

    from movierec_common.artifact import VersionMetadata, write_version
    from recommender_service.validation import validate_version
    from tests.artifacts import tiny_artifact

    art = tiny_artifact(items=6)
    facts = MovieMetadata.build(("Comedy", "Drama"), np.array([1, 3, 0, 2, 0, 0], dtype=np.uint64),
                                np.array([1995, 0, 2001, 1977, 0, 0], dtype=np.int16))
    files, record = movie_metadata.files_for_version(facts)
    good = tmp_path / "good"
    write_version(str(good), art, VersionMetadata(model_kind="test", movies=record), files)
    served = validate_version(str(good)).catalogue.movies
    assert served.genre_counts() == [("Comedy", 2), ("Drama", 2)] and served.years.tolist()[:4] == [1995, 0, 2001, 1977]

    altered = tmp_path / "altered"
    write_version(str(altered), art, VersionMetadata(model_kind="test", movies=record), files)
    (altered / record.years_file).write_bytes(files[record.genres_file][:len(files[record.years_file])])
    with pytest.raises(ArtifactError, match=record.years_file):
        validate_version(str(altered))

    unlisted = tmp_path / "unlisted"
    other = dataclasses.replace(record, years_file="elsewhere.npy")
    write_version(str(unlisted), art, VersionMetadata(model_kind="test", movies=other), files)
    assert "elsewhere.npy" not in json.loads((unlisted / "metadata.json").read_text())["files"]
    with pytest.raises(ArtifactError, match="manifest does not list elsewhere.npy"):
        validate_version(str(unlisted))
