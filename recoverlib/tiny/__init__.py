"""The tiny Mixtral the tests, demo and benchmarks run on: built here (random or trained), nothing downloaded.

Names load on first use.
"""

from recoverlib.lazy import lazy_exports

_EXPORTS = {"TinySpec": "model", "adapter_paths": "model", "make_tiny": "model",
            "TrainedTinyConfig": "trained", "make_trained_tiny": "trained"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
