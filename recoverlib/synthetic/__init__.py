"""A synthetic prompt-recovery task with known answers, small enough for a tiny model to learn on a CPU.

Names load on first use.
"""

from recoverlib.lazy import lazy_exports

_EXPORTS = {
    "FAMILIES": "families",
    "Family": "families",
    "transforms": "families",
    "TaskConfig": "generator",
    "TaskRow": "generator",
    "generate": "generator",
    "write_task": "generator",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
