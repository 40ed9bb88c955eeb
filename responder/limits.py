"""The process's open-file limit: raised for the daemon, put back for what it starts.

Every connection takes a file descriptor, and systemd's default soft limit is 1,024: that
many idle connections from anyone who can reach the port would lock Alertmanager out. The
daemon raises its soft limit to the hard one at start. The programs containment starts get
the limit the daemon started with: select() breaks past 1,024 descriptors, and some tools
close every descriptor up to the limit (systemd asks for exactly this).
"""

from __future__ import annotations

import contextlib
import resource

# Descriptors the daemon takes when the hard limit is infinite; the shipped unit allows
# 65,536. Below OPEN_FILES_FEW (systemd's default soft limit and the like) it warns.
OPEN_FILES_WANTED = 65_536
OPEN_FILES_FEW = 4_096

# The soft limit the process started with, once raise_open_file_limit raised it.
_started_with: int | None = None


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft limit to the hard one; returns the soft limit before and after."""
    global _started_with
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            if _started_with is None:
                _started_with = soft
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def restore_in_child() -> None:
    """For a child between fork and exec (``preexec_fn``): the soft limit the daemon
    started with. One system call, nothing else: safe beside the daemon's threads."""
    if _started_with is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (_started_with, hard))


def raised() -> bool:
    """Whether children need ``restore_in_child``."""
    return _started_with is not None
