"""The README's table of which RPC needs a token is the servers' protected lists, read back.

Operators decide what to expose from that table; it once left out four of the
trainer's reads. So every RPC of both services must have exactly one row, and
each row's condition must be the one the servers enforce.
"""

from __future__ import annotations

import re

from movierec.v1 import recommender_pb2, trainer_pb2
from recommender_service.server import WRITE_METHODS as RECOMMENDER_WRITES
from tests.conftest import REPO_ROOT
from trainer_service.server import MUTATING_METHODS, READ_METHODS

ALWAYS = "whenever tokens are configured"
READS = "with `--require-token-for-reads`"
RECOMMENDER = "with `--require-token`"


def _table() -> dict[str, str]:
    """``{"Trainer.Train": "whenever tokens are configured", ...}`` from the Security section's table."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Security", 1)[1].split("\n### ", 1)[0]
    rows: dict[str, str] = {}
    in_table = False
    for line in section.splitlines():
        if line.startswith("| RPC | token needed |"):
            in_table = True
            continue
        if not in_table or line.startswith("|---"):
            continue
        if not line.startswith("|"):
            break
        names, condition = (cell.strip() for cell in line.strip("|").split("|"))
        for name in re.findall(r"`([\w.]+)`", names):
            assert name not in rows, f"{name} has two rows"
            rows[name] = condition
    assert rows, "no '| RPC | token needed |' table in the README's Security section"
    return rows


def _methods(module, service: str) -> set[str]:
    return {method.name for method in module.DESCRIPTOR.services_by_name[service].methods}


def _names(full_methods: tuple[str, ...]) -> set[str]:
    return {method.rsplit("/", 1)[1] for method in full_methods}


def test_every_trainer_rpc_is_either_a_mutation_or_a_read():
    assert _names(MUTATING_METHODS) | _names(READ_METHODS) == _methods(trainer_pb2, "Trainer")
    assert not _names(MUTATING_METHODS) & _names(READ_METHODS)
    assert all(method.startswith("/movierec.v1.Trainer/") for method in MUTATING_METHODS + READ_METHODS)


def test_the_readme_table_matches_what_the_servers_protect():
    rows = _table()
    trainer = {name.removeprefix("Trainer."): condition for name, condition in rows.items()
               if name.startswith("Trainer.")}
    recommender = {name.removeprefix("Recommender."): condition for name, condition in rows.items()
                   if name.startswith("Recommender.")}
    assert set(trainer) == _methods(trainer_pb2, "Trainer"), trainer
    assert set(recommender) == _methods(recommender_pb2, "Recommender"), recommender
    assert {name for name, condition in trainer.items() if condition == ALWAYS} == _names(MUTATING_METHODS)
    assert {name for name, condition in trainer.items() if condition == READS} == _names(READ_METHODS)
    # The recommender's writes need a token whenever there are tokens; the rest, only with --require-token.
    writes = {name for name, condition in recommender.items() if condition.startswith(ALWAYS)}
    assert writes == _names(RECOMMENDER_WRITES), recommender
    assert {recommender[name] for name in set(recommender) - writes} == {RECOMMENDER}, recommender
