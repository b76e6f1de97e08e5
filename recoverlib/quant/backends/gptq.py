"""GPTQ through GPTQModel (auto-gptq's successor), calibrated on recovery prompts, per-module ``dynamic`` rules.

GPTQModel defuses the Mixtral experts itself (through defuser); here its defused block is swapped for
recoverlib's split block, whose router is an ``nn.Linear``, so ``+router`` plans can quantize the router too.
The global patches GPTQModel makes to transformers are undone after every call. The checkpoint is
GPTQModel's own (``mlp.*`` names); :func:`recoverlib.quant.export.export_vllm` renames it for vLLM.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.module_groups import GROUP_REGEX
from recoverlib.patches import require_attr
from recoverlib.quant.backends.base import LinearStorage, QuantBackend, QuantJob, register_backend
from recoverlib.quant.moe import preserved_transformers, split_block_class
from recoverlib.quant.plan import GroupPrecision, PrecisionPlan

CALIBRATION_BATCH = 8


def dynamic_rules(plan: PrecisionPlan) -> tuple[GroupPrecision, dict]:
    """The base precision (the experts', else attention's) and GPTQModel ``dynamic`` rules for the other groups."""
    base = plan.experts if plan.experts.quantized else plan.attention
    rules: dict[str, dict] = {}
    for group, regex in GROUP_REGEX.items():
        prec = plan.group(group)
        if not prec.quantized:
            if group != "router":  # GPTQModel never quantizes the router unless told (see _router_tree)
                rules[f"-:{regex}"] = {}
        elif prec != base:
            rules[f"+:{regex}"] = {"bits": prec.bits, "group_size": prec.group_size}
    return base, rules


@register_backend("gptq")
class GptqBackend(QuantBackend):
    pip_name = "gptqmodel==7.6.0 (pip install --no-deps gptqmodel==7.6.0 plus its dependencies)"

    def validate(self, plan: PrecisionPlan) -> None:
        for group, prec in plan.groups().items():
            if prec.quantized and prec.bits not in (2, 3, 4, 8):
                raise RecoverlibError(f"plan {plan.name!r}: GPTQ stores 2, 3, 4 or 8 bits ({group}: {prec.bits})")
            if prec.quantized and prec.group_size is None:
                raise RecoverlibError(f"plan {plan.name!r}: GPTQ needs a group_size for {group}")
        for group in ("embeddings", "lm_head"):
            if plan.group(group).quantized:
                raise RecoverlibError(f"plan {plan.name!r}: the gptq backend keeps {group} in 16 bit; use hqq")
        if not (plan.attention.quantized or plan.experts.quantized):
            raise RecoverlibError(f"plan {plan.name!r}: GPTQ needs attention or experts quantized")

    def quantize(self, job: QuantJob):
        import tempfile

        import torch
        from transformers import AutoTokenizer

        plan = job.plan
        base, rules = dynamic_rules(plan)
        tokenizer = AutoTokenizer.from_pretrained(job.model_path)
        staging = tempfile.TemporaryDirectory(prefix="recoverlib-gptq-")
        offload = tempfile.TemporaryDirectory(prefix="recoverlib-gptq-offload-")
        with self._gptqmodel(router=plan.router.quantized) as (GPTQModel, QuantizeConfig, _), offload:
            # GPTQModel's own disk offloading: a meta shell filled from the checkpoint module by module, finished
            # modules written to disk. On the tiny model it gave logits identical to offload_to_disk=False;
            # its peak memory at Mixtral scale is not measured yet.
            cfg = QuantizeConfig(bits=base.bits, group_size=base.group_size, dynamic=rules or None, desc_act=False,
                                 sym=True, offload_to_disk=True, offload_to_disk_path=offload.name)
            wrapper = GPTQModel.load(str(job.model_path), cfg, device="cpu", dtype=getattr(torch, plan.compute_dtype))
            with torch.random.fork_rng(devices=[]), _logs_in(Path(staging.name) / "logs"):
                torch.manual_seed(job.seed)  # pins any sampling inside; the caller's RNG is left alone
                wrapper.quantize(list(job.calibration), batch_size=CALIBRATION_BATCH, tokenizer=tokenizer)
            # Right after quantize the packed zeros are in the checkpoint (v1) format that the inference
            # kernels do not read; GPTQModel's own save + load is the supported way to an inference model.
            wrapper.save(staging.name)
        model = self.load(Path(staging.name), plan)
        model.__dict__["_recoverlib_staging"] = staging  # save() copies these files; removed with the model
        return model

    def save(self, model, out_dir: Path) -> None:
        import shutil

        staging = model.__dict__.get("_recoverlib_staging")
        if staging is None:
            raise RecoverlibError("gptq save: the model was not quantized in this process; copy its checkpoint folder instead")
        for f in Path(staging.name).iterdir():
            if f.is_file() and f.name != "quant_log.csv":
                shutil.copy2(f, out_dir / f.name)

    def load(self, path: Path, plan: PrecisionPlan, device_map: str | dict | None = None):
        import torch
        from safetensors import safe_open

        with self._gptqmodel(router=plan.router.quantized) as (GPTQModel, _, BACKEND):
            if device_map is None:  # the CPU: GPTQModel's torch kernel
                wrapper = GPTQModel.load(str(path), device="cpu", backend=BACKEND.TORCH, dtype=getattr(torch, plan.compute_dtype))
            else:  # GPTQModel picks its fastest kernel for the device
                wrapper = GPTQModel.load(str(path), device_map=device_map, dtype=getattr(torch, plan.compute_dtype))
        model = wrapper.model.eval()
        # GPTQModel casts the fp16 scales to the model dtype on load (bf16 drops 3 mantissa bits); restore them.
        with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
            keys = set(fh.keys())
            for name, module in model.named_modules():
                if f"{name}.scales" in keys and self.describe(module) is not None:
                    module.scales = fh.get_tensor(f"{name}.scales")
        return model

    @contextmanager
    def _gptqmodel(self, router: bool):
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
        hf_home = os.environ.get("HF_HOME")
        with preserved_transformers():
            gptqmodel = self.require("gptqmodel")
            if hf_home is None:  # importing gptqmodel points HF_HOME at a temp folder; undo for the rest of the process
                os.environ.pop("HF_HOME", None)
            from defuser.modeling.unfused_moe import mixtral as defused
            from gptqmodel.models import auto

            saved = (require_attr("gptq-split-block", defused, "LinearMixtralSparseMoeBlock"),
                     require_attr("gptq-router-tree", auto, "MODEL_MAP")["mixtral"])
            defused.LinearMixtralSparseMoeBlock = split_block_class()
            if router:
                auto.MODEL_MAP["mixtral"] = _router_model(saved[1])
            try:
                yield gptqmodel.GPTQModel, gptqmodel.QuantizeConfig, gptqmodel.BACKEND
            finally:
                defused.LinearMixtralSparseMoeBlock, auto.MODEL_MAP["mixtral"] = saved

    def describe(self, module) -> LinearStorage | None:
        # GPTQModel's CPU kernel class is TorchLinear; every GPTQ kernel derives from GPTQQuantLinear.
        if not any(c.__name__ == "GPTQQuantLinear" for c in type(module).__mro__) or getattr(module, "qweight", None) is None:
            return None
        nbytes = sum(_nbytes(getattr(module, k)) for k in ("qweight", "qzeros", "scales", "g_idx"))
        return LinearStorage(int(module.bits), int(module.group_size), module.in_features * module.out_features,
                             nbytes, f"gptq/{str(module.qweight.dtype).removeprefix('torch.')}")

    def linear_bytes(self, out_features: int, in_features: int, prec: GroupPrecision, compute_dtype: str) -> int:
        groups = math.ceil(in_features / prec.group_size)
        qweight = 4 * math.ceil(in_features * prec.bits / 32) * out_features  # int32 words down the input dim
        qzeros = 4 * groups * math.ceil(out_features * prec.bits / 32)
        scales = 2 * groups * out_features  # fp16
        return qweight + qzeros + scales + 4 * in_features  # + int32 g_idx


@contextmanager
def _logs_in(folder: Path):
    """GPTQModel writes per-run logs to ``./logs`` (the caller's working tree); send them to ``folder``."""
    from gptqmodel.looper import loop_processor

    saved = require_attr("gptq-log-dir", loop_processor, "_PROJECT_LOG_DIR")
    loop_processor._PROJECT_LOG_DIR = folder
    try:
        yield
    finally:
        loop_processor._PROJECT_LOG_DIR = saved


def _router_model(base):
    """GPTQModel's Mixtral definition with the router in the quantized tree (it is marked skip by default)."""
    tree = [dict(x) if isinstance(x, dict) else x for x in require_attr("gptq-router-tree", base, "module_tree")]
    # The decoder layer's entry is the dict naming the MoE block ("mlp|block_sparse_moe:moe:?" in 7.6.0).
    found = [(layer, key) for layer in tree if isinstance(layer, dict) for key in layer if key.startswith("mlp")]
    if len(found) != 1 or not isinstance(found[0][0][found[0][1]], dict) or "gate" not in found[0][0][found[0][1]]:
        raise RecoverlibError("gptqmodel's Mixtral module tree has changed (patch 'gptq-router-tree', tested on "
                              "7.6.0): quantizing the router is not possible with this version; keep the router")
    layer, moe_key = found[0]
    layer[moe_key] = {**layer[moe_key], "gate": ("gate",)}
    return type("RouterMixtralQModel", (base,), {"module_tree": tree})


def _nbytes(t) -> int:
    return t.numel() * t.element_size()
