"""The CLI's filter flags (``--genre``, ``--exclude``, ``--years``, ...) and the :class:`Filter` they make.

Why a module of its own: ``recommend`` and ``similar`` take the same flags,
and each flag's value has a small grammar (``50,181``, ``1990-1999``,
``-1999``, a file of ids) whose mistakes must read as a usage error naming the
flag, before anything is sent. Values are parsed by argparse ``type``
functions (so argparse names the flag in its error); :func:`filter_from_args`
then checks what only the whole command line shows (``--all-genres`` without
a ``--genre``) and builds the Filter. Genre names and limits are left to the
server, which knows the served version's genres and answers with them.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .types import Filter

# Release years the server accepts (recommender_service.movie_filter.MAX_YEAR).
MIN_YEAR, MAX_YEAR = 1, 9999
# `--only-file` ids: one a line, though commas and spaces separate them too.
_SEPARATORS = re.compile(r"[\s,]+")
_YEARS = re.compile(r"(?P<low>\d+)?\s*-\s*(?P<high>\d+)?")


class FilterUsageError(Exception):
    """Filter flags that are each fine but do not make sense together."""


def add_filter_options(parser: argparse.ArgumentParser) -> None:
    """The filter flags; their conditions combine with AND."""
    group = parser.add_argument_group(
        "filter (conditions combine with AND; movies of unknown year pass only without --years)")
    group.add_argument("--genre", dest="genres", action="append", type=genre_name, metavar="NAME",
                       help="only movies of this genre; repeated: of any of them (names as `movierec status` "
                       "lists them, e.g. Sci-Fi)")
    group.add_argument("--all-genres", action="store_true",
                       help="a movie must have every --genre instead of any of them")
    group.add_argument("--exclude-genre", dest="exclude_genres", action="append", type=genre_name, metavar="NAME",
                       help="no movie of this genre (repeatable)")
    group.add_argument("--exclude", action="append", type=movie_id_list, metavar="ID,ID,...",
                       help="never answer these movies (repeatable; at most 10,000 in all)")
    group.add_argument("--only", action="append", type=movie_id_list, metavar="ID,ID,...",
                       help="answer only from these movies (repeatable; at most 100,000 in all)")
    group.add_argument("--only-file", action="append", type=movie_ids_in_file, metavar="FILE",
                       help="as --only, the ids read from FILE: one a line (commas and spaces also separate; "
                       "# starts a comment)")
    group.add_argument("--years", type=year_range, metavar="FROM-TO",
                       help="release years, inclusive: 1990-1999, 1990- (from), -1999 (until) or 1995")


def filter_from_args(args: argparse.Namespace) -> Filter | None:
    """The Filter the flags ask for; None when none was given. ``FilterUsageError`` for a bad combination."""
    genres: list[str] = args.genres or []
    if args.all_genres and not genres:
        raise FilterUsageError("--all-genres needs at least one --genre (it makes a movie need every one)")
    min_year, max_year = args.years or (None, None)
    only = _joined(args.only) + _joined(args.only_file)
    chosen = Filter(
        exclude_movie_ids=_joined(args.exclude),
        only_movie_ids=only,
        genres_any=() if args.all_genres else genres,
        genres_all=genres if args.all_genres else (),
        exclude_genres=args.exclude_genres or (),
        min_year=min_year,
        max_year=max_year,
    )
    return None if chosen.is_empty else chosen


def id_flags(args: argparse.Namespace) -> list[str]:
    """The flags of this command line that named movie ids (for the note about unknown ones)."""
    named = [("--recent", getattr(args, "recent", None)), ("--exclude", args.exclude),
             ("--only", args.only), ("--only-file", args.only_file)]
    return [flag for flag, value in named if value]


def _joined(lists: list[list[int]] | None) -> list[int]:
    return [movie_id for ids in lists or () for movie_id in ids]


# --------------------------------------------------------------------------- value grammars (argparse types)


def genre_name(text: str) -> str:
    name = text.strip()
    if not name:
        raise argparse.ArgumentTypeError("must be a genre name, e.g. Comedy; got an empty one")
    return name


def movie_id_list(text: str) -> list[int]:
    """``50,181,7`` (spaces allowed around the commas)."""
    try:
        return [int(part.strip()) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated movie ids, e.g. 50,181; got {text!r}") from None


def movie_ids_in_file(path: str) -> list[int]:
    """The ids in a file, one a line; an empty file is refused, since no ``--only`` ids would mean every movie."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc}") from None
    ids: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        for token in _SEPARATORS.split(line.split("#", 1)[0].strip()):
            if not token:
                continue
            try:
                ids.append(int(token))
            except ValueError:
                raise argparse.ArgumentTypeError(f"line {number} of {path} is not movie ids: {line.strip()!r}") \
                    from None
    if not ids:
        raise argparse.ArgumentTypeError(f"{path} holds no movie ids (answering only from none would mean "
                                         f"answering nothing; leave the flag out for any movie)")
    return ids


def year_range(text: str) -> tuple[int | None, int | None]:
    """``1990-1999``, ``1990-``, ``-1999`` or ``1995`` as (from, to); None: no bound on that side."""
    value = text.strip()
    low: int | None
    high: int | None
    if value.isdigit():
        low = high = _year(value, text)
    else:
        match = _YEARS.fullmatch(value)
        if match is None or not (match["low"] or match["high"]):
            raise argparse.ArgumentTypeError(
                f"must be a year range: 1990-1999, 1990- (from), -1999 (until) or a year; got {text!r}")
        low = _year(match["low"], text) if match["low"] else None
        high = _year(match["high"], text) if match["high"] else None
    if low is not None and high is not None and low > high:
        raise argparse.ArgumentTypeError(f"{text!r} is an inverted range; did you mean {high}-{low}?")
    return low, high


def _year(digits: str, text: str) -> int:
    year = int(digits)
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise argparse.ArgumentTypeError(f"a year is between {MIN_YEAR} and {MAX_YEAR}; got {year} in {text!r}")
    return year
