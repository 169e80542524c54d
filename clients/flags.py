"""Command-line options every movierec program shares: ``--token`` is refused, without repeating the value.

Here, in the client package, because the client's CLI needs it and a client
depends on nothing but the contract; both servers take it from here too
(through ``movierec_common.security``), so there is one definition.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


class _RefuseTokenFlag(argparse.Action):
    """``--token VALUE``: refused, without repeating the value.

    A token given as a flag is readable by every user of the machine in the
    process list and stays in shell history. Without this option argparse
    would take ``--token`` for an abbreviation of ``--token-file``, so the
    token would be used as a file name and printed back in the error.
    """

    def __init__(self, *args: Any, environment: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.environment = environment

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        parser.error(f"{option_string} is not accepted: a token on the command line is visible to every user "
                     f"of this machine; put it in a file given by --token-file, or in ${self.environment}")


# argparse's common base of a parser and an argument group (both take add_argument).
Options = argparse._ActionsContainer


def refuse_token_flags(parser: Options, environment: str = "MOVIEREC_TOKENS") -> None:
    """Adds ``--token``/``--tokens``, hidden, which stop the program with a usage error (see _RefuseTokenFlag).

    ``environment`` names the variable the program reads tokens from instead
    (servers: MOVIEREC_TOKENS; the client: MOVIEREC_TOKEN).
    """
    parser.add_argument("--token", "--tokens", action=_RefuseTokenFlag, environment=environment,
                        help=argparse.SUPPRESS)
