"""Quantization of Mixtral (experts included) and dense bases (Mistral, Llama, Qwen2, Gemma): precision plans,
backends (bitsandbytes, HQQ, GPTQ), audit and planner.

    from recoverlib.quant import quantize, inspect_checkpoint
    out = quantize("tiny/model", "hqq-attn4-exp2", "tiny-hqq")
    print(inspect_checkpoint(out).table())

Names load on first use (importing the package imports none of its modules).
"""

from recoverlib.lazy import lazy_exports

_EXPORTS = {
    "quantize": "api",
    "inspect_checkpoint": "api",
    "load_quantized": "api",
    "META_FILE": "meta",
    "is_quantized": "meta",
    "read_meta": "meta",
    "AuditReport": "audit",
    "audit_model": "audit",
    "check_plan": "audit",
    "PRESETS": "plan",
    "GroupPrecision": "plan",
    "PrecisionPlan": "plan",
    "load_plan": "plan",
    "MIXTRAL_8X7B": "planner",
    "PlanEstimate": "planner",
    "QuantizePeak": "planner",
    "format_estimates": "planner",
    "plan_bytes": "planner",
    "quantize_peak": "planner",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
