"""Genres and release years from the columns of a GroupLens items file, vectorised.

``formats.parse_items`` hands over the columns it read (pyarrow's, or the
line parser's turned into arrow arrays, so both paths share this code) and
gets a :class:`~movierec_common.movie_metadata.MovieMetadata` back:

* ML-100K's ``u.item``: 19 genre flags (0 or 1) named by ``u.genre``, in its
  order (:data:`ML_100K_GENRES` when no ``u.genre`` is at hand); the
  "unknown" flag (any case) means no genre, so it is not a genre of the version. The
  year is the release date's (``01-Jan-1995``); an empty date is unknown.
* ``movies.dat`` / ``movies.csv``: ``|``-separated genre names;
  "(no genres listed)" means none. The genres are in code-point order,
  which is GroupLens's documented (alphabetical) order and stable whatever
  order movies come in. The year is the ``(YYYY)`` ending the title
  (trailing spaces allowed); "Babylon 5 (1998– )" or a title without one is
  unknown (0).

Speed: a genre column repeats a few hundred (ML-25M: ~1,600) distinct
strings, so only the distinct strings are split and coded, and each movie
takes its string's mask by one gather; years are one RE2 pass over the
titles. Nothing here loops over movies in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from movierec_common.movie_metadata import MAX_GENRES, MovieMetadata
from trainer_service.errors import DatasetError

# u.genre of ML-100K, in flag order.
ML_100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                  "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                  "War", "Western")
NO_GENRE_FLAG = "unknown"
NO_GENRES_LISTED = "(no genres listed)"
_RELEASE_YEAR = r"^\s*\d{1,2}-[A-Za-z]{3}-(?P<year>\d{4})\s*$"
_TITLE_YEAR = r"\((?P<year>\d{4})\)\s*$"


def read_genre_names(content: bytes, name: str) -> tuple[str, ...]:
    """The flag names of a ``u.genre`` (``name|index`` lines, latin-1), in flag order."""
    rows = [line.split("|") for line in content.decode("latin-1").splitlines() if line.strip()]
    if len(rows) != len(ML_100K_GENRES) or any(len(r) != 2 or r[1].strip() != str(i) for i, r in enumerate(rows)):
        raise DatasetError(f"{name}: expected the {len(ML_100K_GENRES)} genres of u.item's flags, one "
                           f"'name|index' a line with indices 0 to {len(ML_100K_GENRES) - 1}, found {len(rows)} lines")
    return tuple(r[0].strip() for r in rows)


def _years(texts: Any, pattern: str) -> np.ndarray:
    """int16 year captured by ``pattern`` in each text, 0 where it does not match."""
    found = pc.struct_field(pc.extract_regex(texts, pattern), "year")
    return pc.fill_null(pc.cast(found, pa.int16()), 0).to_numpy(zero_copy_only=False).astype(np.int16, copy=False)


def from_flags(dates: Any, flags: Sequence[Any], name: str, line: Callable[[int], int],
               flag_names: tuple[str, ...] = ML_100K_GENRES) -> MovieMetadata:
    """ML-100K: release dates and the 19 flag columns (strings "0"/"1"); a bad flag names its line."""
    genres = tuple(n for n in flag_names if n.casefold() != NO_GENRE_FLAG)
    bits = np.zeros(len(dates), dtype=np.uint64)
    bit = 0
    for position, (flag_name, column) in enumerate(zip(flag_names, flags, strict=True)):
        values = pc.utf8_trim_whitespace(column)
        on = pc.equal(values, "1").to_numpy(zero_copy_only=False)
        bad = ~(on | pc.is_in(values, value_set=pa.array(["0", ""])).to_numpy(zero_copy_only=False))
        if bad.any():
            row = int(np.argmax(bad))
            raise DatasetError(f"{name}:{line(row)}: genre flag {position + 1} ({flag_name}) is "
                               f"{column[row].as_py()!r}; expected 0 or 1")
        if flag_name.casefold() != NO_GENRE_FLAG:
            bits[on] |= np.uint64(1 << bit)
            bit += 1
    return MovieMetadata.build(genres, bits, _years(dates, _RELEASE_YEAR))


def from_genre_lists(genres: Any, titles: Any, name: str) -> MovieMetadata:
    """movies.dat / movies.csv: ``|``-separated genres, and the year ending each title."""
    if isinstance(genres, pa.ChunkedArray):  # pyarrow's blocks: one array, so one dictionary
        genres = genres.combine_chunks()
    encoded = pc.dictionary_encode(genres)
    distinct = encoded.dictionary
    parts = pc.split_pattern(distinct, "|")
    flat = pc.utf8_trim_whitespace(parts.flatten())
    names = sorted(set(pc.unique(flat).to_pylist()) - {"", NO_GENRES_LISTED})
    if len(names) > MAX_GENRES:
        raise DatasetError(f"{name}: {len(names)} distinct genres; at most {MAX_GENRES} fit a version (a genre "
                           f"is one bit of a 64-bit mask): merge some, e.g. {', '.join(names[MAX_GENRES:][:5])}")
    codes = pc.index_in(flat, value_set=pa.array(names, pa.string()))
    valid = pc.is_valid(codes).to_numpy(zero_copy_only=False)
    shifts = pc.fill_null(codes, 0).to_numpy(zero_copy_only=False).astype(np.uint64)
    part_bits = np.where(valid, np.left_shift(np.uint64(1), shifts), np.uint64(0)).astype(np.uint64)
    offsets = parts.offsets.to_numpy()[:-1]  # split_pattern never yields an empty list
    masks = np.bitwise_or.reduceat(part_bits, offsets) if len(part_bits) else np.zeros(0, np.uint64)
    bits = masks[encoded.indices.to_numpy(zero_copy_only=False)]
    return MovieMetadata.build(tuple(names), bits, _years(titles, _TITLE_YEAR))
