"""The durable store of interactions: one interface, two engines, chosen by URL.

``sqlite:///PATH`` is a SQLite file in WAL mode (:mod:`movierec_common.sqlite_events`): the
default, in the per-user state folder, so every replica on one machine shares it with zero set-up.
``postgresql://...`` is a PostgreSQL database (:mod:`movierec_common.postgres_events`) that many
replicas and machines share. ``none`` turns interactions off.

The rules every engine keeps, and the tests check on both:

**Atomic and durable.** :meth:`EventStore.record` writes a batch in ONE transaction: all of it or
none of it. When it returns, the batch is committed durably (SQLite ``synchronous=FULL`` in WAL
mode; a committed PostgreSQL transaction with ``synchronous_commit`` on), so a crash of the process,
or of the database server, loses nothing acknowledged.

**Store order.** The store numbers each stored interaction with a ``sequence``, strictly increasing
in COMMIT order, and a batch's interactions in the batch's order. So a follower that has read up to
a watermark ``w`` (the highest sequence it saw) never misses a row by asking for ``sequence > w``
later: no row can be committed afterwards with a number ``<= w``. Watermarks are positions in this
order, never ``occurred_at``, which callers choose. Numbers may skip (a PostgreSQL sequence does not
give back what a failed transaction took); they are never reused.

**Idempotent by event id.** ``event_id`` is unique. Resending an interaction with identical content
(user, movie, rating, occurred_at, recommendation id) stores nothing and counts as a duplicate. A
resend with different content raises :class:`EventConflict` naming the id and its index in the
batch: the first write stands and NOTHING of that batch is stored. The same id twice within one
batch is stored once when identical, a conflict otherwise. A client that resends a batch whose
acknowledgement it lost therefore gets the same result as the first time, with the rows counted as
duplicates.

**One error for "not now".** Every engine raises :class:`StoreUnavailable` when the database cannot
be reached or written at the moment (down, unreachable, timed out, locked too long, disk full):
retrying later may work, and callers answer UNAVAILABLE. :class:`IncompatibleStore` means the store
is there but this code must not use it (a newer schema version). Anything else, a programming error
included, passes through as it is and is never disguised as unavailability.

The schema is versioned (``movierec_meta.schema_version``) and created on first use, under each
engine's write lock so that two processes using a new store at once do not both create it.

**One identity.** A store is named by a random ``store_id`` (``movierec_meta.store_id``), made with its
schema. A watermark means something only in the store that numbered it: a version trained on
interactions records the id beside its watermark, and a recommender following another store (a new
file, another database) knows not to trust it.
"""

from __future__ import annotations

import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The schema this code writes and reads; a store marked with a higher one is refused.
SCHEMA_VERSION = 1
META_TABLE = "movierec_meta"
TABLE = "movierec_interactions"
# Each recommender replica's running count of judged recommendations and hits per version (see
# EventStore.report_online): a few rows, rewritten every few seconds, never a write per call.
ONLINE_TABLE = "movierec_online_outcomes"

ACCEPTED_FORMS = ("sqlite:///ABSOLUTE/PATH", "sqlite:RELATIVE/PATH", "postgresql://USER:PASSWORD@HOST:PORT/DB",
                  "postgres://...", "none")


@dataclass(frozen=True)
class Interaction:
    """One interaction as a caller sends it, already validated by the servicer.

    ``occurred_at`` is in epoch seconds (UTC), chosen by the caller (the servicer fills in the time
    of receipt when unset, and says so with ``occurred_at_given=False``). ``recommendation_id`` cites
    the answer that led to it, if any: the online hit rate is computed from it, so the store keeps it
    from the first schema on.
    """

    event_id: str
    user_id: str
    movie_id: int
    rating: float | None
    occurred_at: float
    recommendation_id: str | None = None
    # False: occurred_at is the time of receipt, not the caller's. A resend of such an interaction is
    # received later, so its time differs while the caller sent the same thing: not a conflict.
    occurred_at_given: bool = field(default=True, compare=False)

    def same_content_as(self, stored: Interaction) -> bool:
        """Whether this (re)sent interaction says what ``stored`` says: every field the caller chose."""
        return (self.user_id, self.movie_id, self.rating, self.recommendation_id) == (
            stored.user_id, stored.movie_id, stored.rating, stored.recommendation_id) and (
            not self.occurred_at_given or self.occurred_at == stored.occurred_at)


@dataclass(frozen=True)
class StoredInteraction:
    """An interaction at its position in store order."""

    sequence: int
    interaction: Interaction


@dataclass(frozen=True)
class RecordOutcome:
    """What one :meth:`EventStore.record` did: ``stored`` new rows, ``duplicates`` identical resends
    (from earlier batches or repeated within this one), and ``watermark``, the store's highest
    sequence right after this write committed (every row of the batch is at or below it)."""

    stored: int
    duplicates: int
    watermark: int
    # The new rows at their sequences, in batch order: what the writing replica adds to its fresh
    # histories at once (read your writes), before its follower reads them back from the store.
    rows: tuple[StoredInteraction, ...] = ()


@dataclass(frozen=True)
class OnlineOutcome:
    """Recommendations judged (followed by their user's next 10 interactions, or 24 hours old) and how
    many of them were hits (one of those interactions was with a recommended movie)."""

    judged: int = 0
    hits: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.judged if self.judged else 0.0

    def __add__(self, other: OnlineOutcome) -> OnlineOutcome:
        return OnlineOutcome(self.judged + other.judged, self.hits + other.hits)


class EventStoreError(Exception):
    """Base of the errors the event store raises on purpose."""


class EventConflict(EventStoreError):
    """A resend of ``event_id`` with different content (at ``index`` in the batch): nothing of the batch
    was stored, and the first write stands."""

    def __init__(self, event_id: str, index: int) -> None:
        super().__init__(f"interaction {index}: event_id {event_id!r} was already recorded with different content")
        self.event_id = event_id
        self.index = index


class StoreUnavailable(EventStoreError):
    """The store cannot be reached or written now (retryable); the message says why."""


class IncompatibleStore(EventStoreError):
    """The store exists but this code must not use it (e.g. its schema is newer); not retryable."""


class EventStore(ABC):
    """The durable store of interactions; safe to call from many threads at once.

    Engines connect lazily and create the schema on the first call, so a service can start while its
    database is down and answer from memory meanwhile; :meth:`ensure_schema` checks it eagerly.
    """

    description: str  # for logs and status: the URL with any password redacted
    _store_id: str = ""  # set by ensure_schema

    @property
    def store_id(self) -> str:
        """This store's random identity (see the module's rules); raises as :meth:`ensure_schema` does."""
        self.ensure_schema()
        return self._store_id

    def read_up_to(self, watermark: int, page: int = 50_000) -> Iterable[list[StoredInteraction]]:
        """Every stored interaction with ``sequence <= watermark``, ascending, in pages of at most ``page``
        (what the trainer reads to add interactions to its data, without holding one huge result)."""
        after = 0
        while after < watermark:
            rows = [row for row in self.read_after(after, page) if row.sequence <= watermark]
            if not rows:
                return
            yield rows
            after = rows[-1].sequence

    @abstractmethod
    def record(self, interactions: Sequence[Interaction]) -> RecordOutcome:
        """Stores the batch in one transaction, durable on return (see the module's rules).

        Raises :class:`EventConflict` (nothing stored) or :class:`StoreUnavailable`.
        """

    @abstractmethod
    def read_after(self, watermark: int, limit: int) -> list[StoredInteraction]:
        """At most ``limit`` stored interactions with ``sequence > watermark``, ascending."""

    @abstractmethod
    def follow_after(self, watermark: int, limit: int) -> list[tuple[int, str, int]]:
        """As :meth:`read_after`, only ``(sequence, user_id, movie_id)`` of each row: what a replica's
        follower needs, read without building an :class:`Interaction` per row (which cost a third of a
        recommender's time under 5,000 interactions/s, measured)."""

    @abstractmethod
    def latest_sequence(self) -> int:
        """The highest sequence stored (0 for an empty store)."""

    @abstractmethod
    def report_online(self, replica: str, outcomes: Mapping[int, OnlineOutcome]) -> None:
        """Stores ``replica``'s running totals per model version (replacing what it reported before), in
        one transaction. A replica reports every few seconds; a restarted one reports under a new name,
        so what its predecessor counted stays."""

    @abstractmethod
    def online_outcomes(self) -> dict[int, OnlineOutcome]:
        """Every version's outcomes, summed over the replicas that reported them."""

    @abstractmethod
    def ensure_schema(self) -> None:
        """Creates the schema if the store has none; raises :class:`IncompatibleStore` for a newer one,
        :class:`StoreUnavailable` when it cannot tell now. Every other method calls it first (once)."""

    @abstractmethod
    def close(self) -> None:
        """Closes every connection; later calls raise :class:`StoreUnavailable`."""


def plan_batch(batch: Sequence[Interaction], existing: Mapping[str, Interaction]) -> tuple[list[Interaction], int]:
    """The rows of ``batch`` to insert, in batch order, and how many are duplicates, given the stored
    interactions among its ids (``existing``, read inside the writing transaction).

    Raises :class:`EventConflict` at the first interaction, in batch order, whose id is stored, or appears
    earlier in the batch, with different content. Pure, so both engines decide identically.
    """
    seen: dict[str, Interaction] = dict(existing)
    new: list[Interaction] = []
    duplicates = 0
    for index, interaction in enumerate(batch):
        earlier = seen.get(interaction.event_id)
        if earlier is None:
            seen[interaction.event_id] = interaction
            new.append(interaction)
        elif interaction.same_content_as(earlier):
            duplicates += 1
        else:
            raise EventConflict(interaction.event_id, index)
    return new, duplicates


def check_schema_version(found: int, description: str) -> None:
    """Refuses a store written by newer code: reading it as version 1 could misread or corrupt it."""
    if found > SCHEMA_VERSION:
        raise IncompatibleStore(f"event store {description} has schema version {found}, newer than the "
                                f"{SCHEMA_VERSION} this movierec knows: upgrade movierec, or point --events elsewhere")


def new_store_id() -> str:
    """A store's identity, made once with its schema."""
    return uuid.uuid4().hex


STORE_ID_KEY = "store_id"


def chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def default_url() -> str:
    """``sqlite:///<state>/movierec/events.sqlite``, where ``<state>`` is ``$XDG_STATE_HOME`` when it is
    set to an absolute path (the XDG spec says to ignore a relative one) and ``~/.local/state`` otherwise:
    the per-user state folder, so every replica a user runs on one machine shares one file."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if state and os.path.isabs(state) else Path.home() / ".local" / "state"
    return f"sqlite:///{(base / 'movierec' / 'events.sqlite').as_posix().lstrip('/')}"


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite:`` URL names, absolute: ``sqlite:///abs/path`` or ``sqlite:relative/path``
    (relative to the working directory; ``~`` is expanded)."""
    rest = url[len("sqlite:"):]
    if rest.startswith("///"):
        path = Path("/" + rest[3:].lstrip("/"))
    elif rest.startswith("//"):
        raise ValueError(f"--events {url!r}: a sqlite URL has no host; use sqlite:///ABSOLUTE/PATH or "
                         f"sqlite:RELATIVE/PATH")
    else:
        path = Path(rest).expanduser()
    if not rest.strip("/") or path.name == "":
        raise ValueError(f"--events {url!r} names no file; use sqlite:///ABSOLUTE/PATH or sqlite:RELATIVE/PATH")
    return path.absolute()


def open_store(url: str | None) -> EventStore | None:
    """The store a ``--events`` URL names, without connecting yet: None or "" is :func:`default_url`,
    ``none`` turns interactions off (returns None). Raises ValueError naming the accepted forms."""
    url = (url or "").strip() or default_url()
    if url.lower() == "none":
        return None
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        from movierec_common.sqlite_events import SqliteEventStore

        return SqliteEventStore(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        try:
            from movierec_common.postgres_events import PostgresEventStore
        except ImportError as error:  # psycopg is the optional extra `postgres`
            raise ImportError(f"--events {url.split(':', 1)[0]}://...: needs psycopg, "
                              f"pip install 'movierec[postgres]' ({error})") from error
        return PostgresEventStore(url)
    raise ValueError(f"--events {url!r} is not an event store URL; accepted: {', '.join(ACCEPTED_FORMS)}")
