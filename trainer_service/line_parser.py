"""The careful path of parsing: a GroupLens file read line by line, so a refusal names its line.

Whoever sent a file must be told which line is wrong, and pyarrow does not
say. When pyarrow refuses a file, its streaming reader finds the 1 MB block it
refuses (``arrow_csv.rows_before_refusal``) and this parser reads from there
to name the line (seconds, not minutes, at 25 million lines). It also accepts
what pyarrow is stricter about (spaces around numbers, lines of only
whitespace), reading the whole file when it finds nothing wrong, so both
paths accept the same files.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

import numpy as np

from trainer_service.arrow_csv import LineIndex, Prepared, rows_before_refusal
from trainer_service.errors import DatasetError
from trainer_service.layouts import BOM, Layout, is_header

_INT64 = (-(2 ** 63), 2 ** 63)


def refuse_nul(content: bytes, name: str, before: int | None = None) -> None:
    """``DatasetError`` naming the line of the first NUL byte (before byte ``before``): a binary file."""
    position = content.find(b"\x00", 0, len(content) if before is None else before)
    if position >= 0:
        line = content.count(b"\n", 0, position) + 1
        raise DatasetError(f"{name}:{line}: contains NUL bytes; is this a binary file?")


def raise_first_bad_line(content: bytes, name: str, layout: Layout, encoding: str, prepared: Prepared | None,
                         types: dict[int, Any]) -> None:
    """Raise ``DatasetError`` for the first line the line parser refuses, if any.

    pyarrow's streaming reader says which block it refused; every line before
    that block parsed, so the scan starts there.
    """
    if prepared is not None:
        index = LineIndex(content)
        start_line = index.line_of_row(rows_before_refusal(prepared, layout, types) + prepared.header_lines)
        start = index.start_of_line(start_line)
        refuse_nul(content, name, before=start)  # pyarrow takes NUL inside titles; the line parser does not
        if start_line > 1:
            for _ in data_lines(content, name, layout, encoding, start=start, first_number=start_line):
                pass
            return
    for _ in data_lines(content, name, layout, encoding):
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
            raw = raw.removeprefix(BOM)
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


def _int(text: str, name: str, number: int, what: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise DatasetError(f"{name}:{number}: {what} {text!r} is not an integer") from None
    if not _INT64[0] <= value < _INT64[1]:
        raise DatasetError(f"{name}:{number}: {what} {text!r} is out of range")
    return value


def data_lines(content: bytes, name: str, layout: Layout, encoding: str, start: int = 0, first_number: int = 1
               ) -> Iterator[tuple[int, list[Any]]]:
    """(line number, parsed fields) of every data line from byte ``start``: ids and timestamps as
    ints, a rating as a finite float, other fields as text. A CSV's header is checked when read from the top."""
    lines = _lines(content, name, encoding, start, first_number)
    if layout.header and start == 0:
        number, line = next(lines, (0, ""))
        if not is_header(line.encode("utf-8"), layout):
            raise DatasetError(f"{name}:{number or 1}: expected the header line {','.join(layout.header)}, "
                               f"found {line[:80]!r}")
    ratings = layout.fields == 4
    for number, line in lines:
        fields: list[Any] = _split(line, layout, name, number)
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
