"""Child processes that end with their parent: ``queuechat load`` and the benchmarks start servers and
Locust this way.

Children run in sessions of their own (a Ctrl-C in the parent must not reach them before it stops them in
order), so a parent killed outright would leave them behind. On Linux each child first asks the kernel for
SIGTERM when its parent dies (PR_SET_PDEATHSIG, kept across exec), then becomes the real command.
Standard library only: a public module, so that scripts outside the package need not reach into
``queuechat._load``.
"""

from __future__ import annotations

import os
import sys

__all__ = ["die_with_parent"]

_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)  # the parent is already gone\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def die_with_parent(command: list[str]) -> list[str]:
    """``command``, run so that it gets SIGTERM if this process dies first (Linux; as is elsewhere)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]
