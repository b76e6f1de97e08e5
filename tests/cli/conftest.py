"""The quantization commands' tests use the quantization tests' tiny model and quantized copies."""

from tests.quant.conftest import _hf_home, base, quant_tiny, quantized  # noqa: F401 (fixtures)
