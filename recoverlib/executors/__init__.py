"""Where chunks run, found through one registry (entry point group ``recoverlib.executors``): an executor is
one file.

``local`` serves every chunk in this process with one engine; ``ray`` spreads chunks over the workers of a Ray
cluster, each holding its own engine. The driver (:func:`recoverlib.pipeline.run.predict`) records what they
return in input order, so every executor writes the same bytes.
"""

from recoverlib.registry import Registry

EXECUTORS = Registry("executor", "recoverlib.executors", {
    "local": "recoverlib.executors.local:LocalExecutor",
    "ray": "recoverlib.executors.ray:RayExecutor",
})

__all__ = ["EXECUTORS"]
