"""The MovieLens releases GroupLens distributes: the one table of them.

Which releases there are, how each is laid out, what tensorflow-datasets
calls it and how large its catalogue is. The names a ``TrainRequest`` may
give (``dataset.name``) are tensorflow-datasets' names of the releases TFDS
has; they are also listed in ``movierec.v1.vocabulary.DATASET_NAMES`` so a
client needs only the contract, and a test holds the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer_service.errors import DatasetError


@dataclass(frozen=True)
class Release:
    """A MovieLens release as GroupLens distributes it."""

    key: str                # the zip's name, e.g. "ml-1m"
    title: str
    files: tuple[str, str]  # ratings and movies file names
    tfds_name: str = ""     # tensorflow-datasets config, when TFDS has it
    movies: int = 0         # catalogue size as published (0: changes between copies), for refusing early

    @property
    def url(self) -> str:
        return f"https://files.grouplens.org/datasets/movielens/{self.key}.zip"

    def not_found(self, detail: str) -> str:
        """What to tell someone whose copy of this release could not be found, and how to get one."""
        return (
            f"{self.title} not found: {detail}. Download {self.url}, unzip it "
            f"(or keep the {self.key}.zip), and pass the folder or zip path with "
            "--movielens-dir or set the MOVIELENS_DIR environment variable."
        )


# The three file layouts (see ``formats``), by the file names GroupLens gives them.
FILES_100K, FILES_DAT, FILES_CSV = ("u.data", "u.item"), ("ratings.dat", "movies.dat"), ("ratings.csv", "movies.csv")
ML_100K = Release("ml-100k", "MovieLens 100K", FILES_100K, "movielens/100k-ratings", 1_682)
RELEASES = (
    ML_100K,
    Release("ml-1m", "MovieLens 1M", FILES_DAT, "movielens/1m-ratings", 3_883),
    Release("ml-10m", "MovieLens 10M", FILES_DAT, "", 10_681),
    Release("ml-20m", "MovieLens 20M", FILES_CSV, "movielens/20m-ratings", 27_278),
    Release("ml-25m", "MovieLens 25M", FILES_CSV, "movielens/25m-ratings", 62_423),
    Release("ml-latest-small", "MovieLens latest (small)", FILES_CSV, "movielens/latest-small-ratings", 9_742),
    Release("ml-latest", "MovieLens latest", FILES_CSV),
)
# What a TrainRequest's dataset.name may ask for (equal to movierec.v1.vocabulary.DATASET_NAMES; a test checks).
DATASET_NAMES = tuple(release.tfds_name for release in RELEASES if release.tfds_name)


def release_named(name: str) -> Release:
    """The release a dataset name asks for; ``DatasetError`` lists the valid names."""
    for release in RELEASES:
        if release.tfds_name and release.tfds_name == name:
            return release
    raise DatasetError(f"unknown dataset name {name[:80]!r}; choose one of: {', '.join(DATASET_NAMES)}")
