"""Learned heads on the recovery model (a verifier and an embedding regressor): model, loading, serving
cache. Names load on first use."""

from recoverlib.lazy import lazy_exports

_EXPORTS = {
    "HeadInfo": "model",
    "LoadedHead": "model",
    "load_head": "model",
    "read_info": "model",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
