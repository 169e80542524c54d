"""What a version knows about its movies besides ids and titles: genres and release years.

One typed value, :class:`MovieMetadata`, made by the trainer's parsers
(``trainer_service.movie_facts``), stored beside the SavedModel as two side
arrays (:func:`files_for_version`), and read back by the recommender's
loader (:func:`read`) into its serving catalogue.

Why this shape (the filters to come need "which movies pass genres any/all/
none and a year range" over the whole catalogue, fast):

* genres are one ``uint64`` bitmask per movie, bit ``g`` for
  ``genre_names[g]``: 8 bytes a movie (8 MB at a million movies), and a
  genre condition over the catalogue is one vectorised AND/compare. A CSR of
  genre ids would be smaller only below one genre a movie and needs a
  segment reduction per condition. Hence at most :data:`MAX_GENRES` (64)
  distinct genres a version; GroupLens has 18-20, and a dataset with more is
  refused when it is read (naming the count), never silently truncated;
* years are ``int16``, 0 = unknown (2 MB at a million movies).

Side arrays rather than SavedModel variables: the SavedModel stays exactly
as before (TF Serving and older recommenders load it unchanged), the files
are ``.npy`` (typed header, no pickle, mappable), and like every other file
they are in the manifest, so a missing or altered one rejects the version.
A version published before metadata existed has neither file nor record and
reads as :meth:`MovieMetadata.none`: no genres, every year unknown.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np

from movierec_common.artifact import ArtifactError, MovieFactsRecord, check_file_name

MAX_GENRES = 64
GENRES_FILE = "movie_genres.npy"
YEARS_FILE = "movie_years.npy"
MAX_GENRE_NAME_CHARS = 100


@dataclass(frozen=True, eq=False)
class MovieMetadata:
    """Genres and years of a catalogue's movies, aligned with its movie index."""

    genre_names: tuple[str, ...]  # bit g of a mask is genre_names[g]; the source's own order
    genre_bits: np.ndarray        # [I] uint64
    years: np.ndarray             # [I] int16, 0 = unknown
    present: bool = True          # False: the version was published before metadata existed
    # mask -> names, filled as answers need them (a catalogue has a few hundred distinct masks);
    # never pickled, so a catalogue crosses processes as its arrays alone.
    _names_by_mask: dict[int, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(cls, genre_names: tuple[str, ...], genre_bits: np.ndarray, years: np.ndarray) -> MovieMetadata:
        """Checked: ArtifactError unless the arrays align and every set bit names a genre."""
        facts = cls(tuple(genre_names), np.ascontiguousarray(genre_bits, dtype=np.uint64),
                    np.ascontiguousarray(years, dtype=np.int16))
        facts.check(len(facts.years))
        return facts

    @classmethod
    def none(cls, num_items: int) -> MovieMetadata:
        """A version without metadata: no genres, every year unknown."""
        return cls((), np.zeros(num_items, dtype=np.uint64), np.zeros(num_items, dtype=np.int16), present=False)

    def __len__(self) -> int:
        return int(self.years.shape[0])

    def check(self, num_items: int) -> None:
        names = self.genre_names
        if len(names) > MAX_GENRES:
            raise ArtifactError(f"{len(names)} genres; a version holds at most {MAX_GENRES}")
        if len(set(names)) != len(names) or any(not n or len(n) > MAX_GENRE_NAME_CHARS for n in names):
            raise ArtifactError("genre names must be distinct, non-empty and at most "
                                f"{MAX_GENRE_NAME_CHARS} characters")
        for what, array, dtype in (("genres", self.genre_bits, np.uint64), ("years", self.years, np.int16)):
            if array.dtype != dtype or array.shape != (num_items,):
                raise ArtifactError(f"movie {what}: {array.dtype} {array.shape}, expected {np.dtype(dtype)} "
                                    f"for {num_items} movies")
        unnamed = ~np.uint64((1 << len(names)) - 1) if len(names) < MAX_GENRES else np.uint64(0)
        if num_items and np.any(self.genre_bits & unnamed):
            raise ArtifactError(f"movie genres set bits beyond the {len(names)} named genres")
        if num_items and self.years.min() < 0:
            raise ArtifactError("movie years hold negative values")

    def genre_counts(self) -> list[tuple[str, int]]:
        """(genre, movies having it), in genre order: one pass over the masks per genre."""
        return [(name, int(np.count_nonzero(self.genre_bits & np.uint64(1 << g))))
                for g, name in enumerate(self.genre_names)]

    def bits_of(self, names: tuple[str, ...]) -> int:
        """The mask of genres ``names``; KeyError naming the first one this version does not have."""
        position = {name: g for g, name in enumerate(self.genre_names)}
        bits = 0
        for name in names:
            g = position.get(name)
            if g is None:
                raise KeyError(name)
            bits |= 1 << g
        return bits

    def matching(self, any_bits: int = 0, all_bits: int = 0, none_bits: int = 0, min_year: int = 0,
                 max_year: int = 0) -> np.ndarray:
        """bool [I]: the movies having at least one genre of ``any_bits`` (0: no such condition), every
        genre of ``all_bits`` and none of ``none_bits``, released within [min_year, max_year] (0: no
        bound; a movie of unknown year passes only when neither bound is set). A vectorised pass per
        condition set: about 0.2 ms each at a million movies."""
        passing = np.ones(len(self), dtype=bool)
        bits = self.genre_bits
        if any_bits:
            passing &= (bits & np.uint64(any_bits)) != 0
        if all_bits:
            passing &= (bits & np.uint64(all_bits)) == np.uint64(all_bits)
        if none_bits:
            passing &= (bits & np.uint64(none_bits)) == 0
        if min_year or max_year:
            passing &= self.years > 0
            if min_year:
                passing &= self.years >= min_year
            if max_year:
                passing &= self.years <= max_year
        return passing

    def _names(self, mask: int) -> tuple[str, ...]:
        names = self._names_by_mask.get(mask)
        if names is None:
            names = tuple(name for g, name in enumerate(self.genre_names) if mask >> g & 1)
            self._names_by_mask[mask] = names  # a racing thread writes the same value
        return names

    def genres_of(self, index: int) -> tuple[str, ...]:
        return self._names(int(self.genre_bits[index]))

    def genres_of_many(self, indices: np.ndarray) -> list[tuple[str, ...]]:
        """Genre names of each movie in ``indices``: one gather, then a dict lookup per movie."""
        return [self._names(mask) for mask in self.genre_bits[indices].tolist()]

    def __getstate__(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, bool]:
        return self.genre_names, self.genre_bits, self.years, self.present

    def __setstate__(self, state: tuple[tuple[str, ...], np.ndarray, np.ndarray, bool]) -> None:
        for name, value in zip(("genre_names", "genre_bits", "years", "present"), state, strict=True):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_names_by_mask", {})


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def files_for_version(facts: MovieMetadata | None) -> tuple[dict[str, bytes], MovieFactsRecord | None]:
    """What the trainer adds to a version: ``({file: bytes}, metadata.json's "movies" record)``.

    None (a source without metadata, e.g. TFDS): no files, no record, as before.
    """
    if facts is None or not facts.present:
        return {}, None
    record = MovieFactsRecord(genres=facts.genre_names, genres_file=GENRES_FILE, years_file=YEARS_FILE)
    return {GENRES_FILE: _npy(facts.genre_bits), YEARS_FILE: _npy(facts.years)}, record


def _load(path: str, name: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise ArtifactError(f"{name} is missing (metadata.json says the version has movie metadata)")
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"{name} is not a readable .npy array: {exc}") from exc


def read(version_dir: str, record: MovieFactsRecord | None, num_items: int) -> MovieMetadata:
    """A local version's metadata, checked against its catalogue; none when ``record`` is None
    (published before metadata existed). Raises ArtifactError."""
    if record is None:
        return MovieMetadata.none(num_items)
    for name in (record.genres_file, record.years_file):
        if not name.endswith(".npy"):
            raise ArtifactError(f"movie metadata file {name[:100]!r} is not a .npy file")
        check_file_name(name)
    bits = _load(os.path.join(version_dir, record.genres_file), record.genres_file)
    years = _load(os.path.join(version_dir, record.years_file), record.years_file)
    for name, array in ((record.genres_file, bits), (record.years_file, years)):
        if array.shape != (num_items,):
            raise ArtifactError(f"{name} holds {array.shape[0] if array.ndim == 1 else array.shape} movies, "
                                f"the version {num_items}")
    facts = MovieMetadata(tuple(record.genres), bits, years)
    facts.check(num_items)
    return facts
