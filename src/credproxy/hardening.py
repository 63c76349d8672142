"""Keep the secrets a host process holds in its memory only, as ``ssh-agent`` does.

A process that holds refresh tokens, API keys or the store's data key must
not leave them in a core file (written into its working directory, which may
be a project directory bound into a sandbox) nor let another process of the
same uid attach with ptrace or read ``/proc/<pid>/mem``. On Linux both follow
from ``prctl(PR_SET_DUMPABLE, 0)``: the kernel then writes no core for the
process (with the default ``fs.suid_dumpable=0``; with 2 only a root-owned
core to an absolute ``core_pattern``), refuses ptrace and ``/proc/<pid>/mem``
to non-root peers, and makes ``/proc/<pid>`` owned by root. ``RLIMIT_CORE`` 0
is the second, portable lock on the core file.

Memory is not locked: CPython copies a secret into many heap objects the
program cannot name, so only ``mlockall`` would cover them, and an ordinary
user's ``RLIMIT_MEMLOCK`` (often 64 KiB or 8 MiB) is far below the daemon's
resident size, so ``MCL_FUTURE`` would turn later allocations into
``MemoryError``. ``docs/security.md`` says what this leaves (swap).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
from dataclasses import dataclass
from typing import Final

PR_SET_DUMPABLE: Final = 4
PR_GET_DUMPABLE: Final = 3


@dataclass(frozen=True, slots=True)
class Hardening:
    """What ``harden_process`` achieved, so callers and tests can say it."""

    core_limit_zero: bool
    undumpable: bool


def harden_process(*, limit_core: bool = True) -> Hardening:
    """Turn off core dumps and same-uid ptrace for this process.

    ``limit_core=False`` keeps ``RLIMIT_CORE`` as it is (still no core of this
    process, which is undumpable): ``credproxy run`` passes it because the
    limit is inherited by the user's command, whose own core dumps are the
    user's business. Never raises: a platform without ``prctl`` keeps the
    core limit, and the result says what holds.
    """
    core_zero = _zero_core_limit() if limit_core else False
    return Hardening(core_limit_zero=core_zero, undumpable=_set_undumpable())


def _zero_core_limit() -> bool:
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError):
        return False
    return True


def _set_undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)`` through libc; ``False`` off Linux or on failure."""
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    if prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        return False
    return bool(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)
