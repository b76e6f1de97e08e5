"""MoE-aware quantization of Mixtral: precision plans, backends (bitsandbytes, HQQ, GPTQ), audit and planner.

    from recoverlib.quant import quantize, inspect_checkpoint
    out = quantize("tiny/model", "hqq-attn4-exp2", "tiny-hqq")
    print(inspect_checkpoint(out).table())
"""

from recoverlib.quant.api import (
    META_FILE,
    inspect_checkpoint,
    is_quantized,
    load_quantized,
    quantize,
    read_meta,
)
from recoverlib.quant.audit import AuditReport, audit_model, check_plan
from recoverlib.quant.plan import PRESETS, GroupPrecision, PrecisionPlan, load_plan
from recoverlib.quant.planner import (
    MIXTRAL_8X7B,
    PlanEstimate,
    QuantizePeak,
    format_estimates,
    plan_bytes,
    quantize_peak,
)

__all__ = [
    "META_FILE", "MIXTRAL_8X7B", "PRESETS", "AuditReport", "GroupPrecision", "PlanEstimate", "PrecisionPlan",
    "audit_model", "check_plan", "format_estimates", "inspect_checkpoint", "is_quantized", "load_plan", "load_quantized",
    "plan_bytes", "quantize", "quantize_peak", "QuantizePeak", "read_meta",
]
