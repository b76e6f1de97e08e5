"""The tiny Mixtral the tests, demo and benchmarks run on: built here (random or trained), nothing downloaded."""

from recoverlib.tiny.model import TinySpec, adapter_paths, make_tiny
from recoverlib.tiny.trained import TrainedTinyConfig, make_trained_tiny

__all__ = ["TinySpec", "TrainedTinyConfig", "adapter_paths", "make_tiny", "make_trained_tiny"]
