"""responder: turns Alertmanager webhooks into safe containment and pages that reach a human.

The pipeline, one module per stage (see ``responder.app`` for the wiring):
ingest -> store -> classify -> incident -> contain -> escalate -> outbox -> notifiers.
"""

__version__ = "0.1.0"
