"""How a containment run ended, as one vocabulary shared by the guards, the runner and the audit.

Kept in its own module so that the pure guards do not depend on the runner that executes.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"  # non-zero exit, unexpected HTTP status, connection refused
    TIMEOUT = "timeout"  # killed (process group) or the request ran out of time
    CHECK_FAILED = "check_failed"  # the action ran but the verification said it did not help
    START_LIMIT_HIT = "start_limit_hit"  # systemd refuses further starts until reset-failed
    ERROR = "error"  # could not even start: executable missing, permission denied
    REJECTED = "rejected"  # a parameter failed validation; nothing ran
    DRY_RUN = "dry_run"  # rendered and recorded, deliberately not run
    RUNNING = "running"  # recorded before the process starts; a restart finds it here
    INTERRUPTED = "interrupted"  # was RUNNING when the daemon stopped; never re-run blindly
    # The kill switch was engaged between two attempts: the retries left were not made.
    # Neither a success nor a failure: the attempts made say nothing of those not made.
    STOPPED = "stopped"

    @property
    def is_failure(self) -> bool:
        """Counts towards the circuit breaker and escalation."""
        return self in FAILURES


FAILURES = frozenset(
    {Outcome.FAILED, Outcome.TIMEOUT, Outcome.CHECK_FAILED, Outcome.START_LIMIT_HIT, Outcome.ERROR}
)
