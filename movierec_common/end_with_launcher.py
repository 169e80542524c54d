"""``python -m movierec_common.end_with_launcher LAUNCHER_PID COMMAND...``: runs COMMAND so that it gets
SIGTERM (a graceful stop) when the launcher goes, even by SIGKILL.

Test support, run by :class:`movierec_common.server_process.ServerProcess`:
it asks the kernel for the parent-death signal, checks that the launcher did
not die before that, then replaces itself with COMMAND (exec keeps the pid and
the parent-death signal). Linux only; elsewhere COMMAND just runs.
Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def main(argv: list[str]) -> None:
    launcher, command = int(argv[0]), argv[1:]
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != launcher:  # the launcher died before the line above
        sys.exit(1)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
