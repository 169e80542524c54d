"""Parsers for the MovieLens file layouts GroupLens publishes.

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

Each layout has two parsers. ML-25M's ratings.csv has 25 million lines, so the
normal path hands the whole file to pyarrow's multithreaded CSV reader and
checks values with numpy, never looking at a line from Python. pyarrow's
errors do not say which line is wrong, and whoever sent the file must be told,
so when pyarrow refuses a file its streaming reader finds the 1 MB block it
refuses and a plain line-by-line parser reads from there to name the line
(seconds, not minutes, at 25 million lines). That parser also accepts what
pyarrow is stricter about (spaces around numbers, lines of only whitespace),
reading the whole file when it finds nothing wrong, so both paths accept the
same files. Checks that need no parsing (a rating that is not finite, a movie
listed twice) run on the arrays and find the line number only once they fail.
"""

from __future__ import annotations

import csv
import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv


class DatasetError(ValueError):
    """Data that cannot be used; the message names the file, line and problem."""


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

_BOM = b"\xef\xbb\xbf"
_NOT_BLANK = re.compile(rb"\S")
_FIRST_LINE_BYTES = 1 << 16
_ARROW_BLOCK_BYTES = 16 << 20
# Bytes that may stand in for "::" so pyarrow, which splits on one character,
# can read .dat files; the first one absent from the file is used.
_SEPARATOR_STAND_INS = (b"\x1f", b"\x1e", b"\x1d", b"\x1c", b"\x01", b"\x02")


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
class Catalogue:
    """The movies of one file, in file order."""

    movie_ids: np.ndarray   # int64, unique
    titles: np.ndarray      # str
    name: str
    layout: Layout
    encoding: str
    line: Callable[[int], int]

    def __len__(self) -> int:
        return len(self.movie_ids)


# --------------------------------------------------------------------------- detection


def _first_line(content: bytes) -> bytes:
    head = content[:_FIRST_LINE_BYTES].removeprefix(_BOM)
    for line in head.split(b"\n"):
        if line.strip():
            return line.rstrip(b"\r")
    return b""


def _header_cells(line: bytes) -> list[str]:
    text = line.removeprefix(_BOM).decode("utf-8", "replace")
    try:
        return [cell.strip() for cell in next(csv.reader([text]))]
    except (csv.Error, StopIteration):
        return []


def _has_header(line: bytes, layout: Layout) -> bool:
    cells = _header_cells(line)
    return bool(cells) and cells[0].lower() == layout.header[0].lower()


def detect_ratings_layout(content: bytes, name: str) -> Layout:
    line, suffix = _first_line(content), name.lower().rsplit(".", 1)[-1]
    if b"::" in line:
        return RATINGS_DAT
    if b"\t" in line:
        return RATINGS_TAB
    if b"," in line or _has_header(line, RATINGS_CSV) or suffix == "csv":
        return RATINGS_CSV
    return RATINGS_DAT if suffix == "dat" else RATINGS_TAB


def detect_items_layout(content: bytes, name: str) -> Layout:
    line, suffix = _first_line(content), name.lower().rsplit(".", 1)[-1]
    if b"::" in line:
        return ITEMS_DAT
    if _has_header(line, ITEMS_CSV) or suffix == "csv":
        return ITEMS_CSV
    return ITEMS_DAT if suffix == "dat" else ITEMS_PIPE


def _items_encoding(content: bytes, layout: Layout) -> str:
    if layout is ITEMS_PIPE:
        return "latin-1"
    if layout is ITEMS_DAT:
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            return "latin-1"
    return "utf-8"


# --------------------------------------------------------------------------- entry points


_RATING_TYPES = {0: pa.int64(), 1: pa.int64(), 2: pa.float32(), 3: pa.int64()}
_MOVIE_TYPES = {0: pa.int64(), 1: pa.string()}


def parse_ratings(content: bytes, name: str) -> RatingColumns:
    """Ratings in any GroupLens layout; ``DatasetError`` names the first bad line."""
    _require_content(content, name)
    layout = detect_ratings_layout(content, name)
    prepared = _arrow_input(content, layout)
    columns = _arrow_columns(prepared, layout, _RATING_TYPES)
    if columns is None:
        _raise_first_bad_line(content, name, layout, "utf-8", prepared, _RATING_TYPES)
        parsed = _slow_ratings(content, name, layout)
    else:
        _refuse_nul(content, name)
        parsed = RatingColumns(
            users=_numpy(columns, 0, np.int64), movies=_numpy(columns, 1, np.int64),
            ratings=_numpy(columns, 2, np.float32), timestamps=_numpy(columns, 3, np.int64),
            name=name, layout=layout, line=_LineIndex(content).row_numbers(prepared.header_lines),
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
    return max(0, lines - int(bool(layout.header) and _has_header(_first_line(content), layout)))


def parse_items(content: bytes, name: str) -> Catalogue:
    """Movies in any GroupLens layout, keyed by id; titles keep their spelling."""
    _require_content(content, name)
    layout = detect_items_layout(content, name)
    encoding = _items_encoding(content, layout)
    utf8 = content if encoding == "utf-8" else content.decode(encoding).encode("utf-8")
    prepared = _arrow_input(utf8, layout)
    columns = _arrow_columns(prepared, layout, _MOVIE_TYPES)
    if columns is not None and pc.any(pc.match_substring_regex(columns[1], r"[\r\n]")).as_py():
        columns = None  # a quoted line break: rows no longer match lines, so let the line parser judge
    if columns is None:
        _raise_first_bad_line(content, name, layout, encoding, prepared, _MOVIE_TYPES)
        catalogue = _slow_items(content, name, layout, encoding)
    else:
        _refuse_nul(content, name)
        catalogue = Catalogue(
            movie_ids=_numpy(columns, 0, np.int64), titles=columns[1].to_numpy(zero_copy_only=False).astype(str),
            name=name, layout=layout, encoding=encoding, line=_LineIndex(content).row_numbers(prepared.header_lines),
        )
    _check_unique_movies(catalogue)
    return catalogue


def _require_content(content: bytes, name: str) -> None:
    if not _NOT_BLANK.search(content):
        raise DatasetError(f"{name}: file is empty")


def _refuse_nul(content: bytes, name: str, before: int | None = None) -> None:
    position = content.find(b"\x00", 0, len(content) if before is None else before)
    if position >= 0:
        line = content.count(b"\n", 0, position) + 1
        raise DatasetError(f"{name}:{line}: contains NUL bytes; is this a binary file?")


def _check_unique_movies(catalogue: Catalogue) -> None:
    ids = catalogue.movie_ids
    order = np.argsort(ids, kind="stable")
    repeats = ids[order[1:]] == ids[order[:-1]]
    if repeats.any():
        row = int(order[1:][repeats].min())  # the first line that repeats an earlier one
        first = int(np.flatnonzero(ids == ids[row])[0])
        raise DatasetError(f"{catalogue.name}:{catalogue.line(row)}: movie id {ids[row]} already defined "
                           f"on line {catalogue.line(first)}")


# --------------------------------------------------------------------------- pyarrow path


_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
_LOCATE_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class _Prepared:
    buffer: pa.Buffer
    delimiter: str
    header_lines: int


def _arrow_input(content: bytes, layout: Layout) -> _Prepared | None:
    """What pyarrow reads: the bytes (BOM dropped), a one-character delimiter, header lines to skip.

    None when pyarrow cannot take the file as it is (a CSV whose line 1 is not
    the header, a .dat file already using every stand-in byte); the line
    parser then reads it.
    """
    skip = 0
    if layout.header:
        first_line = content[:_FIRST_LINE_BYTES].split(b"\n", 1)[0].rstrip(b"\r")
        if [c.lower() for c in _header_cells(first_line)] != [h.lower() for h in layout.header]:
            return None
        skip = 1
    delimiter = layout.separator
    if layout.separator == "::":
        stand_in = next((b for b in _SEPARATOR_STAND_INS if b not in content), None)
        if stand_in is None:
            return None
        content, delimiter = content.replace(b"::", stand_in), stand_in.decode()
    buffer = pa.py_buffer(content)
    if content.startswith(_BOM):
        buffer = buffer[len(_BOM):]
    return _Prepared(buffer, delimiter, skip)


def _arrow_options(prepared: _Prepared, layout: Layout, types: dict[int, pa.DataType], *, block_size: int,
                   use_threads: bool) -> dict:
    names = [f"f{i}" for i in range(layout.fields)]
    return dict(
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=prepared.header_lines, block_size=block_size,
                                       use_threads=use_threads),
        parse_options=pacsv.ParseOptions(delimiter=prepared.delimiter, quote_char='"' if layout.quoted else False,
                                         double_quote=True, newlines_in_values=False),
        convert_options=pacsv.ConvertOptions(
            column_types={names[i]: t for i, t in types.items()}, include_columns=[names[i] for i in sorted(types)],
            null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False, check_utf8=True,
        ),
    )


def _arrow_columns(prepared: _Prepared | None, layout: Layout, types: dict[int, pa.DataType]) -> list | None:
    """The file's columns, read by pyarrow on all cores; None when pyarrow refuses it."""
    if prepared is None:
        return None
    try:
        table = pacsv.read_csv(pa.BufferReader(prepared.buffer),
                               **_arrow_options(prepared, layout, types, block_size=_ARROW_BLOCK_BYTES,
                                                use_threads=True))
    except _ARROW_ERRORS:
        return None
    if table.num_rows == 0:
        return None
    columns = table.columns
    del table
    if any(column.null_count for column in columns):
        return None
    return columns


def _rows_before_refusal(prepared: _Prepared, layout: Layout, types: dict[int, pa.DataType]) -> int:
    """Rows pyarrow reads, one small block at a time and in order, before the block it refuses.

    Lets the line parser start near the bad line instead of at the top of
    a 25-million-line file.
    """
    rows = 0
    try:
        reader = pacsv.open_csv(pa.BufferReader(prepared.buffer),
                                **_arrow_options(prepared, layout, types, block_size=_LOCATE_BLOCK_BYTES,
                                                 use_threads=False))
        for batch in reader:
            rows += batch.num_rows
    except _ARROW_ERRORS:
        pass
    return rows


def _numpy(columns: list, index: int, dtype) -> np.ndarray:
    """Column ``index`` as a writeable numpy array, releasing pyarrow's copy as soon as it is made.

    One-block files come back as read-only views of pyarrow's memory; those
    are small, and copied so callers get the ordinary arrays they expect.
    """
    array = columns[index].to_numpy().astype(dtype, copy=False)
    columns[index] = None
    return array if array.flags.writeable else array.copy()


class _LineIndex:
    """Where a file's lines start, and which lines pyarrow turned into rows (it skips empty ones).

    Only error messages need this, so the newline scan runs on first use.
    """

    _CHUNK = 64 << 20

    def __init__(self, content: bytes):
        self._content = content
        self._newlines: np.ndarray | None = None
        self._row_lines: np.ndarray | None = None

    @property
    def newlines(self) -> np.ndarray:
        if self._newlines is None:
            data = np.frombuffer(self._content, dtype=np.uint8)
            self._newlines = np.concatenate(
                [np.zeros(0, np.int64)] + [np.flatnonzero(data[start:start + self._CHUNK] == 10) + start
                                           for start in range(0, len(data), self._CHUNK)])
        return self._newlines

    def line_of_row(self, row: int) -> int:
        """1-based line of pyarrow's row ``row`` (header rows included); one past the end for later rows."""
        if self._row_lines is None:
            data = np.frombuffer(self._content, dtype=np.uint8)
            starts = np.concatenate([[0], self.newlines + 1])
            lengths = np.concatenate([self.newlines, [len(data)]]) - starts
            only_cr = (lengths == 1) & (data[np.minimum(starts, max(len(data) - 1, 0))] == 13)
            self._row_lines = np.flatnonzero((lengths > 0) & ~only_cr) + 1
        return int(self._row_lines[row]) if row < len(self._row_lines) else len(self.newlines) + 2

    def row_numbers(self, header_lines: int) -> Callable[[int], int]:
        """Line of each data row, for messages (holds the file's bytes, not pyarrow's copy)."""
        return lambda row: self.line_of_row(row + header_lines)

    def start_of_line(self, number: int) -> int:
        """Byte offset where line ``number`` starts; the file's length past the last line."""
        if number <= 1:
            return 0
        return int(self.newlines[number - 2]) + 1 if number - 2 < len(self.newlines) else len(self._content)


# --------------------------------------------------------------------------- line-by-line path


def _raise_first_bad_line(content: bytes, name: str, layout: Layout, encoding: str, prepared: _Prepared | None,
                          types: dict[int, pa.DataType]) -> None:
    """Raise ``DatasetError`` for the first line the line parser refuses, if any.

    pyarrow's streaming reader says which block it refused; every line before
    that block parsed, so the scan starts there.
    """
    start_line = 1
    if prepared is not None:
        index = _LineIndex(content)
        start_line = index.line_of_row(_rows_before_refusal(prepared, layout, types) + prepared.header_lines)
        start = index.start_of_line(start_line)
        _refuse_nul(content, name, before=start)  # pyarrow takes NUL inside titles; the line parser does not
        if start_line > 1:
            for _ in _data_lines(content, name, layout, encoding, start=start, first_number=start_line):
                pass
            return
    for _ in _data_lines(content, name, layout, encoding):
        pass


def _lines(content: bytes, name: str, encoding: str, start: int = 0, first_number: int = 1
           ) -> Iterator[tuple[int, str]]:
    """(line number, text) of non-blank lines from byte ``start``, failing on NUL or undecodable bytes."""
    number, end = first_number - 1, start - 1
    while end < len(content):
        begin, number = end + 1, number + 1
        end = content.find(b"\n", begin)
        if end < 0:
            end = len(content)
        raw = content[begin:end].rstrip(b"\r")
        if begin == 0:
            raw = raw.removeprefix(_BOM)
        if not raw.strip():
            continue
        if b"\x00" in raw:
            raise DatasetError(f"{name}:{number}: contains NUL bytes; is this a binary file?")
        try:
            yield number, raw.decode(encoding)
        except UnicodeDecodeError as error:
            raise DatasetError(
                f"{name}:{number}: byte {raw[error.start]:#04x} at column {error.start + 1} is not valid {encoding}"
            ) from None


def _split(line: str, layout: Layout, name: str, number: int) -> list[str]:
    if layout.quoted and '"' in line:
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error as error:
            raise DatasetError(f"{name}:{number}: not valid CSV ({error}); a field holding commas or quotes "
                               'must be quoted, with its quotes doubled ("")') from None
    else:
        fields = line.split(layout.separator)
    if len(fields) != layout.fields:
        raise DatasetError(f"{name}:{number}: expected {layout.fields} {layout.describe}, found {len(fields)}")
    return fields


_INT64 = (-(2 ** 63), 2 ** 63)


def _int(text: str, name: str, number: int, what: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise DatasetError(f"{name}:{number}: {what} {text!r} is not an integer") from None
    if not _INT64[0] <= value < _INT64[1]:
        raise DatasetError(f"{name}:{number}: {what} {text!r} is out of range")
    return value


def _data_lines(content: bytes, name: str, layout: Layout, encoding: str, start: int = 0, first_number: int = 1
                ) -> Iterator[tuple[int, list]]:
    """(line number, parsed fields) of every data line from byte ``start``: ids and timestamps as
    ints, a rating as a finite float, other fields as text. A CSV's header is checked when read from the top."""
    lines = _lines(content, name, encoding, start, first_number)
    if layout.header and start == 0:
        number, line = next(lines, (0, ""))
        if [c.lower() for c in _header_cells(line.encode("utf-8"))] != [h.lower() for h in layout.header]:
            raise DatasetError(f"{name}:{number or 1}: expected the header line {','.join(layout.header)}, "
                               f"found {line[:80]!r}")
    ratings = layout.fields == 4
    for number, line in lines:
        fields = _split(line, layout, name, number)
        if ratings:
            fields[0] = _int(fields[0], name, number, "user id")
            fields[1] = _int(fields[1], name, number, "movie id")
            try:
                rating = float(fields[2])
            except ValueError:
                raise DatasetError(f"{name}:{number}: rating {fields[2]!r} is not a number") from None
            if not np.isfinite(rating):
                raise DatasetError(f"{name}:{number}: rating {fields[2]!r} is not finite")
            fields[2] = rating
            fields[3] = _int(fields[3], name, number, "timestamp")
        else:
            fields[0] = _int(fields[0], name, number, "movie id")
        yield number, fields


def _slow_ratings(content: bytes, name: str, layout: Layout) -> RatingColumns:
    """Every line parsed in Python, into compact arrays (8 bytes a value, not a Python object each)."""
    users, movies, stamps, numbers, ratings = array("q"), array("q"), array("q"), array("q"), array("f")
    for number, (user, movie, rating, stamp) in _data_lines(content, name, layout, "utf-8"):
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


def _slow_items(content: bytes, name: str, layout: Layout, encoding: str) -> Catalogue:
    ids, numbers, titles = array("q"), array("q"), []
    for number, fields in _data_lines(content, name, layout, encoding):
        ids.append(fields[0])
        titles.append(fields[1])
        numbers.append(number)
    if not numbers:
        raise DatasetError(f"{name}: holds no movies, only a header line")
    lines = np.frombuffer(numbers, dtype=np.int64)
    return Catalogue(
        movie_ids=np.frombuffer(ids, dtype=np.int64).copy(), titles=np.asarray(titles, dtype=str),
        name=name, layout=layout, encoding=encoding, line=lambda row: int(lines[row]),
    )
