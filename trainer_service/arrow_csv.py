"""The fast path of parsing: a whole GroupLens file read by pyarrow's multithreaded CSV reader.

ML-25M's ratings.csv has 25 million lines, so the normal path hands the whole
file to pyarrow and checks values with numpy, never looking at a line from
Python. pyarrow's errors do not say which line is wrong; when it refuses a
file, :func:`rows_before_refusal` finds the block it refuses with the
streaming reader, so the line parser (``line_parser``) can start there and
name the line. :class:`LineIndex` maps pyarrow's rows back to file lines,
for messages only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from trainer_service.layouts import BOM, FIRST_LINE_BYTES, Layout, is_header

_ARROW_BLOCK_BYTES = 16 << 20
_LOCATE_BLOCK_BYTES = 1 << 20
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
# Bytes that may stand in for "::" so pyarrow, which splits on one character,
# can read .dat files; the first one absent from the file is used.
_SEPARATOR_STAND_INS = (b"\x1f", b"\x1e", b"\x1d", b"\x1c", b"\x01", b"\x02")

# Column types by field position: what is kept of each layout's fields.
RATING_TYPES = {0: pa.int64(), 1: pa.int64(), 2: pa.float32(), 3: pa.int64()}
MOVIE_TYPES = {0: pa.int64(), 1: pa.string()}


def movie_types(layout: Layout) -> dict[int, Any]:
    """What is kept of an items file: id and title, and the metadata fields as strings (u.item's release
    date and 19 genre flags, the genres of movies.dat/.csv), which ``movie_facts`` reads vectorised."""
    metadata = (2, *range(5, 24)) if layout.fields == 24 else (2,)
    return {**MOVIE_TYPES, **{i: pa.string() for i in metadata}}


@dataclass(frozen=True)
class Prepared:
    """What pyarrow reads: the bytes (BOM dropped), a one-character delimiter, header lines to skip."""

    buffer: Any  # pa.Buffer
    delimiter: str
    header_lines: int


def arrow_input(content: bytes, layout: Layout) -> Prepared | None:
    """The file as pyarrow can read it.

    None when pyarrow cannot take the file as it is (a CSV whose line 1 is not
    the header, a .dat file already using every stand-in byte); the line
    parser then reads it.
    """
    skip = 0
    if layout.header:
        line_one = content[:FIRST_LINE_BYTES].split(b"\n", 1)[0].rstrip(b"\r")
        if not is_header(line_one, layout):
            return None
        skip = 1
    delimiter = layout.separator
    if layout.separator == "::":
        stand_in = next((b for b in _SEPARATOR_STAND_INS if b not in content), None)
        if stand_in is None:
            return None
        content, delimiter = content.replace(b"::", stand_in), stand_in.decode()
    buffer = pa.py_buffer(content)
    if content.startswith(BOM):
        buffer = buffer[len(BOM):]
    return Prepared(buffer, delimiter, skip)


def _arrow_options(prepared: Prepared, layout: Layout, types: dict[int, Any], *, block_size: int,
                   use_threads: bool) -> dict[str, Any]:
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


def arrow_columns(prepared: Prepared | None, layout: Layout, types: dict[int, Any]) -> list[Any] | None:
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
    columns: list[Any] = table.columns
    del table
    if any(column.null_count for column in columns):
        return None
    return columns


def rows_before_refusal(prepared: Prepared, layout: Layout, types: dict[int, Any]) -> int:
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


def numpy_column(columns: list[Any], index: int, dtype: type[np.generic]) -> np.ndarray:
    """Column ``index`` as a writeable numpy array, releasing pyarrow's copy as soon as it is made.

    One-block files come back as read-only views of pyarrow's memory; those
    are small, and copied so callers get the ordinary arrays they expect.
    """
    array: np.ndarray = columns[index].to_numpy().astype(dtype, copy=False)
    columns[index] = None
    return array if array.flags.writeable else array.copy()


class LineIndex:
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
