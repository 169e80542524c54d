"""Small generated datasets in GroupLens format, for tests that need a real
trainer run but not MovieLens's size."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_grouplens_files(folder: Path, *, users: int = 60, items: int = 40, per_user: int = 12, seed: int = 0) -> Path:
    """Writes ratings.data and items.item with a learnable structure: two taste
    groups that each prefer half of the movies."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for user in range(1, users + 1):
        liked = np.arange(1, items // 2 + 1) if user % 2 else np.arange(items // 2 + 1, items + 1)
        for movie in rng.choice(liked, size=min(per_user, liked.size), replace=False):
            lines.append(f"{user}\t{movie}\t{rng.integers(3, 6)}\t{880000000 + len(lines)}")
    (folder / "ratings.data").write_text("\n".join(lines) + "\n", encoding="latin-1")
    titles = [f"{movie}|Movie {movie} (19{50 + movie % 50})|01-Jan-1995||http://example.invalid|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|1"
              for movie in range(1, items + 1)]
    titles[0] = "1|Misérables, Les (1995)|01-Jan-1995||http://example.invalid|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|1"
    (folder / "items.item").write_bytes(("\n".join(titles) + "\n").encode("latin-1"))
    return folder


def write_movielens_dat_zip(path: Path, *, users: int = 60, movies: int = 50, ratings: int = 1200, seed: int = 0,
                            top: str = "ml-1m") -> Path:
    """A zip laid out like GroupLens's ml-1m.zip (``ml-1m/ratings.dat``, latin-1
    ``movies.dat``, ``users.dat``), holding synthetic ratings with taste structure."""
    import zipfile

    from trainer_service import synth

    data = synth.synthesize(users, movies, ratings, seed=seed)
    columns = (data.user_ids.tolist(), data.movie_ids.tolist(), data.stars.tolist(), data.timestamps.tolist())
    rating_lines = [f"{u}::{m}::{max(1, s // 2)}::{t}" for u, m, s, t in zip(*columns, strict=True)]
    movie_lines = [f"{m}::Misérables {m}, Les (1995)::Drama" for m in data.catalogue.tolist()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/ratings.dat", "\n".join(rating_lines) + "\n")
        archive.writestr(f"{top}/movies.dat", ("\n".join(movie_lines) + "\n").encode("latin-1"))
        archive.writestr(f"{top}/users.dat", "".join(f"{u}::F::25::0::00000\n" for u in range(1, users + 1)))
    return path
