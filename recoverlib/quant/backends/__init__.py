"""Quantization backends, one file each, found through one registry (entry point group
``recoverlib.quant_backends``).

A backend class is stored as an instance: backends hold no state and are called per model.
"""

from recoverlib.registry import Registry

BACKENDS = Registry("quantization backend", "recoverlib.quant_backends", {
    "bnb": "recoverlib.quant.backends.bnb:BnbBackend",
    "hqq": "recoverlib.quant.backends.hqq:HqqBackend",
    "gptq": "recoverlib.quant.backends.gptq:GptqBackend",
}, make=lambda cls: cls())
get_backend = BACKENDS.get

__all__ = ["BACKENDS", "get_backend"]
