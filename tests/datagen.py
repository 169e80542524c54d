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
