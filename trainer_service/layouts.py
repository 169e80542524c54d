"""The file layouts GroupLens publishes MovieLens in, and how a file's layout is recognised.

Three layouts cover every release:

* ML-100K: ``u.data`` (tab-separated ``user movie rating timestamp``) and
  ``u.item`` (24 ``|``-separated fields, latin-1);
* ML-1M and ML-10M: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``)
  and ``movies.dat`` (``MovieID::Title::Genres``; latin-1 in ML-1M, UTF-8 in
  ML-10M, so each file is tried as UTF-8 first and read as latin-1 otherwise);
* ML-20M, ML-25M and ml-latest: ``ratings.csv`` and ``movies.csv``, UTF-8,
  with a header line, titles quoted when they hold commas or quotes.

A file's layout is recognised from its first line (a ``::``, a tab, a CSV
header) before its name, because request paths may be named anything.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """One GroupLens file layout."""

    name: str          # the GroupLens file it follows, e.g. "ratings.dat"
    family: str        # the releases that use it, for dataset descriptions
    separator: str     # "\t", "::", "|" or ","
    fields: int
    describe: str      # completes "expected <fields> ..."
    header: tuple[str, ...] = ()  # CSV header, as GroupLens spells it

    @property
    def quoted(self) -> bool:
        return self.separator == ","


RATINGS_TAB = Layout("u.data", "ML-100K", "\t", 4, "tab-separated fields (user id, movie id, rating, timestamp)")
RATINGS_DAT = Layout("ratings.dat", "ML-1M/10M", "::", 4, "'::'-separated fields (UserID::MovieID::Rating::Timestamp)")
RATINGS_CSV = Layout("ratings.csv", "ML-20M/25M", ",", 4, "comma-separated fields (userId,movieId,rating,timestamp)",
                     header=("userId", "movieId", "rating", "timestamp"))
ITEMS_PIPE = Layout("u.item", "ML-100K", "|", 24, "'|'-separated fields "
                    "(movie id|title|release date|video release date|IMDb URL|19 genre flags)")
ITEMS_DAT = Layout("movies.dat", "ML-1M/10M", "::", 3, "'::'-separated fields (MovieID::Title::Genres)")
ITEMS_CSV = Layout("movies.csv", "ML-20M/25M", ",", 3, "comma-separated fields (movieId,title,genres; "
                   "titles holding commas or quotes must be quoted)", header=("movieId", "title", "genres"))

BOM = b"\xef\xbb\xbf"
FIRST_LINE_BYTES = 1 << 16


def first_line(content: bytes) -> bytes:
    """The first line that is not blank (a BOM dropped), without its line end."""
    head = content[:FIRST_LINE_BYTES].removeprefix(BOM)
    for line in head.split(b"\n"):
        if line.strip():
            return line.rstrip(b"\r")
    return b""


def header_cells(line: bytes) -> list[str]:
    text = line.removeprefix(BOM).decode("utf-8", "replace")
    try:
        return [cell.strip() for cell in next(csv.reader([text]))]
    except (csv.Error, StopIteration):
        return []


def is_header(line: bytes, layout: Layout) -> bool:
    """Whether ``line`` is ``layout``'s header, every column named as GroupLens names it (any case)."""
    return [c.lower() for c in header_cells(line)] == [h.lower() for h in layout.header]


def _starts_like_header(line: bytes, layout: Layout) -> bool:
    cells = header_cells(line)
    return bool(cells) and cells[0].lower() == layout.header[0].lower()


def has_header(content: bytes, layout: Layout) -> bool:
    """Whether the file's first line looks like ``layout``'s header (its first column's name)."""
    return bool(layout.header) and _starts_like_header(first_line(content), layout)


def detect_ratings_layout(content: bytes, name: str) -> Layout:
    line, suffix = first_line(content), name.lower().rsplit(".", 1)[-1]
    if b"::" in line:
        return RATINGS_DAT
    if b"\t" in line:
        return RATINGS_TAB
    if b"," in line or _starts_like_header(line, RATINGS_CSV) or suffix == "csv":
        return RATINGS_CSV
    return RATINGS_DAT if suffix == "dat" else RATINGS_TAB


def detect_items_layout(content: bytes, name: str) -> Layout:
    line, suffix = first_line(content), name.lower().rsplit(".", 1)[-1]
    if b"::" in line:
        return ITEMS_DAT
    if _starts_like_header(line, ITEMS_CSV) or suffix == "csv":
        return ITEMS_CSV
    return ITEMS_DAT if suffix == "dat" else ITEMS_PIPE


def items_encoding(content: bytes, layout: Layout) -> str:
    """latin-1 for ML-100K's u.item and for a movies.dat that is not UTF-8 (ML-1M's); UTF-8 otherwise."""
    if layout is ITEMS_PIPE:
        return "latin-1"
    if layout is ITEMS_DAT:
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            return "latin-1"
    return "utf-8"
