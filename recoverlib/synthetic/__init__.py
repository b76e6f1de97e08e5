"""A synthetic prompt-recovery task with known answers, small enough for a tiny model to learn on a CPU."""

from recoverlib.synthetic.families import FAMILIES, Family, transforms
from recoverlib.synthetic.generator import TaskConfig, TaskRow, generate, write_task

__all__ = ["FAMILIES", "Family", "TaskConfig", "TaskRow", "generate", "transforms", "write_task"]
