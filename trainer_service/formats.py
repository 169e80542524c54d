"""Parsing the MovieLens files GroupLens publishes, in any of its layouts, into columns of raw ids.

The layouts, and how a file's is recognised from its first line rather than
its name, are ``layouts``'. Each layout has two parsers:

* the fast path (``arrow_csv``): the whole file to pyarrow's multithreaded
  CSV reader, values checked with numpy, never a line looked at from Python;
  25 million ratings in seconds;
* the careful path (``line_parser``): when pyarrow refuses a file, it finds
  the block pyarrow refuses and a plain line-by-line parser reads from there
  to name the line. It also accepts what pyarrow is stricter about (spaces
  around numbers, lines of only whitespace), reading the whole file when it
  finds nothing wrong, so both paths accept the same files.

Checks that need no parsing (a rating that is not finite, a movie listed
twice) run on the arrays and find the line number only once they fail.
"""

from __future__ import annotations

import dataclasses
import re
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from movierec_common.movie_metadata import MovieMetadata
from trainer_service import movie_facts
from trainer_service.arrow_csv import RATING_TYPES, LineIndex, arrow_columns, arrow_input, movie_types, numpy_column
from trainer_service.errors import DatasetError
from trainer_service.layouts import (
    ITEMS_CSV,
    ITEMS_DAT,
    ITEMS_PIPE,
    RATINGS_CSV,
    RATINGS_DAT,
    RATINGS_TAB,
    Layout,
    detect_items_layout,
    detect_ratings_layout,
    has_header,
    items_encoding,
)
from trainer_service.line_parser import data_lines, raise_first_bad_line, refuse_nul

__all__ = ["ITEMS_CSV", "ITEMS_DAT", "ITEMS_PIPE", "RATINGS_CSV", "RATINGS_DAT", "RATINGS_TAB", "Layout",
           "MovieColumns", "RatingColumns", "count_items", "detect_items_layout", "detect_ratings_layout",
           "parse_items", "parse_ratings"]

_NOT_BLANK = re.compile(rb"\S")  # searched, not stripped: a 700 MB file is not copied to ask


@dataclass(frozen=True)
class RatingColumns:
    """The ratings of one file as raw ids, in file order."""

    users: np.ndarray       # int64 user ids as written
    movies: np.ndarray      # int64 movie ids as written
    ratings: np.ndarray     # float32
    timestamps: np.ndarray  # int64
    name: str               # the file, for messages
    layout: Layout
    line: Callable[[int], int]  # 1-based line of a row, for messages

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class MovieColumns:
    """The movies of one items file as raw ids, titles and metadata, in file order."""

    movie_ids: np.ndarray   # int64, unique
    titles: np.ndarray      # str
    name: str
    layout: Layout
    encoding: str
    line: Callable[[int], int]
    facts: MovieMetadata | None = None  # genres and years; None where the source has none (TFDS)

    def __len__(self) -> int:
        return len(self.movie_ids)


# --------------------------------------------------------------------------- entry points


def parse_ratings(content: bytes, name: str) -> RatingColumns:
    """Ratings in any GroupLens layout; ``DatasetError`` names the first bad line."""
    _require_content(content, name)
    layout = detect_ratings_layout(content, name)
    prepared = arrow_input(content, layout)
    columns = arrow_columns(prepared, layout, RATING_TYPES)
    if columns is None or prepared is None:
        raise_first_bad_line(content, name, layout, "utf-8", prepared, RATING_TYPES)
        parsed = _slow_ratings(content, name, layout)
    else:
        refuse_nul(content, name)
        parsed = RatingColumns(
            users=numpy_column(columns, 0, np.int64), movies=numpy_column(columns, 1, np.int64),
            ratings=numpy_column(columns, 2, np.float32), timestamps=numpy_column(columns, 3, np.int64),
            name=name, layout=layout, line=LineIndex(content).row_numbers(prepared.header_lines),
        )
    bad = ~np.isfinite(parsed.ratings)
    if bad.any():
        row = int(np.argmax(bad))
        raise DatasetError(f"{name}:{parsed.line(row)}: rating {parsed.ratings[row]} is not finite")
    return parsed


def count_items(content: bytes, name: str) -> int:
    """Non-blank lines of an items file less its header: its movies, without parsing them."""
    lines = sum(1 for line in content.split(b"\n") if line.strip())
    layout = detect_items_layout(content, name)
    return max(0, lines - int(has_header(content, layout)))


def parse_items(content: bytes, name: str, genre_names: tuple[str, ...] | None = None) -> MovieColumns:
    """Movies in any GroupLens layout, keyed by id; titles keep their spelling; genres and years
    read once here (``movie_facts``). ``genre_names``: a u.item's flag names, from its u.genre."""
    _require_content(content, name)
    layout = detect_items_layout(content, name)
    encoding = items_encoding(content, layout)
    utf8 = content if encoding == "utf-8" else content.decode(encoding).encode("utf-8")
    types = movie_types(layout)
    prepared = arrow_input(utf8, layout)
    columns = arrow_columns(prepared, layout, types)
    if columns is not None and pc.any(pc.match_substring_regex(columns[1], r"[\r\n]")).as_py():
        columns = None  # a quoted line break: rows no longer match lines, so let the line parser judge
    if columns is None or prepared is None:
        raise_first_bad_line(content, name, layout, encoding, prepared, types)
        movies, titles, metadata = _slow_items(content, name, layout, encoding)
    else:
        refuse_nul(content, name)
        titles, metadata = columns[1], columns[2:]
        movies = MovieColumns(
            movie_ids=numpy_column(columns, 0, np.int64), titles=titles.to_numpy(zero_copy_only=False).astype(str),
            name=name, layout=layout, encoding=encoding, line=LineIndex(content).row_numbers(prepared.header_lines),
        )
    _check_unique_movies(movies)
    if layout is ITEMS_PIPE:
        facts = movie_facts.from_flags(metadata[0], metadata[1:], name, movies.line,
                                       genre_names or movie_facts.ML_100K_GENRES)
    else:
        facts = movie_facts.from_genre_lists(metadata[0], titles, name)
    return dataclasses.replace(movies, facts=facts)


def _require_content(content: bytes, name: str) -> None:
    if not _NOT_BLANK.search(content):
        raise DatasetError(f"{name}: file is empty")


def _check_unique_movies(movies: MovieColumns) -> None:
    ids = movies.movie_ids
    order = np.argsort(ids, kind="stable")
    repeats = ids[order[1:]] == ids[order[:-1]]
    if repeats.any():
        row = int(order[1:][repeats].min())  # the first line that repeats an earlier one
        first = int(np.flatnonzero(ids == ids[row])[0])
        raise DatasetError(f"{movies.name}:{movies.line(row)}: movie id {ids[row]} already defined "
                           f"on line {movies.line(first)}")


# --------------------------------------------------------------------------- whole files, line by line


def _slow_ratings(content: bytes, name: str, layout: Layout) -> RatingColumns:
    """Every line parsed in Python, into compact arrays (8 bytes a value, not a Python object each)."""
    users, movies, stamps, numbers, ratings = array("q"), array("q"), array("q"), array("q"), array("f")
    for number, (user, movie, rating, stamp) in data_lines(content, name, layout, "utf-8"):
        users.append(user)
        movies.append(movie)
        ratings.append(rating)
        stamps.append(stamp)
        numbers.append(number)
    if not numbers:
        raise DatasetError(f"{name}: holds no ratings, only a header line")
    lines = np.frombuffer(numbers, dtype=np.int64)
    return RatingColumns(
        users=np.frombuffer(users, dtype=np.int64).copy(), movies=np.frombuffer(movies, dtype=np.int64).copy(),
        ratings=np.frombuffer(ratings, dtype=np.float32).copy(),
        timestamps=np.frombuffer(stamps, dtype=np.int64).copy(),
        name=name, layout=layout, line=lambda row: int(lines[row]),
    )


def _slow_items(content: bytes, name: str, layout: Layout, encoding: str
                ) -> tuple[MovieColumns, Any, list[Any]]:
    """The movies, their titles and metadata columns (as arrow arrays, like pyarrow's), line by line."""
    ids, numbers, titles = array("q"), array("q"), []
    kept = (2, *range(5, 24)) if layout is ITEMS_PIPE else (2,)
    metadata: list[list[str]] = [[] for _ in kept]
    for number, fields in data_lines(content, name, layout, encoding):
        ids.append(fields[0])
        titles.append(fields[1])
        for column, position in zip(metadata, kept, strict=True):
            column.append(fields[position])
        numbers.append(number)
    if not numbers:
        raise DatasetError(f"{name}: holds no movies, only a header line")
    lines = np.frombuffer(numbers, dtype=np.int64)
    movies = MovieColumns(
        movie_ids=np.frombuffer(ids, dtype=np.int64).copy(), titles=np.asarray(titles, dtype=str),
        name=name, layout=layout, encoding=encoding, line=lambda row: int(lines[row]),
    )
    return movies, pa.array(titles, pa.string()), [pa.array(column, pa.string()) for column in metadata]
