"""contain: safe containment actions, from validated parameters to an audited run.

``catalog`` reads ``actions:`` and ``containment:`` from config; ``params`` turns hostile label
values into validated parameters; ``guards`` decides, purely and from persisted state, whether
a run may start now; ``runner`` prepares (pure) and executes (argv without a shell, an HTTP
request, or a built-in: systemd restart, address block, evidence capture) and returns a
``RunResult`` for the audit.
"""

from responder.contain.catalog import (
    Action,
    ActionCatalog,
    ContainmentSettings,
    Kind,
    parse_actions,
    parse_containment,
)
from responder.contain.guards import (
    Decision,
    Finished,
    Guard,
    GuardState,
    KillSwitch,
    RunRecord,
    UndoDecision,
    UndoState,
    decide,
    finish_run,
    interrupt_running,
    pause,
    prune,
    reset_breaker,
    resume,
    start_run,
    undo_decision,
)
from responder.contain.outcome import Outcome
from responder.contain.params import BoundParam, ParamRejected
from responder.contain.runner import (
    ActionRunner,
    ExecRequest,
    PreparedRun,
    RunContext,
    RunResult,
    UndoPlan,
)

__all__ = [
    "Action",
    "ActionCatalog",
    "ActionRunner",
    "BoundParam",
    "ContainmentSettings",
    "Decision",
    "ExecRequest",
    "Finished",
    "Guard",
    "GuardState",
    "KillSwitch",
    "Kind",
    "Outcome",
    "ParamRejected",
    "PreparedRun",
    "RunContext",
    "RunRecord",
    "RunResult",
    "UndoDecision",
    "UndoPlan",
    "UndoState",
    "decide",
    "finish_run",
    "interrupt_running",
    "parse_actions",
    "parse_containment",
    "pause",
    "prune",
    "reset_breaker",
    "resume",
    "start_run",
    "undo_decision",
]
