"""GPTQ through GPTQModel (auto-gptq's successor), calibrated on recovery prompts, per-module ``dynamic``
rules.

GPTQModel defuses the Mixtral experts itself (through defuser); here its defused block is swapped for
recoverlib's split block, whose router is an ``nn.Linear``, so ``+router`` plans can quantize the router too.
The global patches GPTQModel makes to transformers are undone after every call.

A dense base (Mistral, Llama, Qwen2, Gemma) goes through GPTQModel's own definition of its family, its
``mlp.gate_proj/up_proj/down_proj`` names kept as written (they are vLLM's and transformers' own).

The checkpoint is written in Mixtral's published layout (``block_sparse_moe.experts.N.w1/w2/w3``, the router
``block_sparse_moe.gate``), the names vLLM's Mixtral loader and published GPTQ Mixtrals use:
``vllm.LLM(path)`` loads it with nothing of recoverlib installed. GPTQModel writes (and its own
``GPTQModel.load`` reads) the transformers-5 names (``mlp.experts.N.gate_proj``), so its output is renamed
shard by shard, and recoverlib reads the checkpoint through its own loader
(:func:`recoverlib.quant.layerwise.load_model`, one layer at a time), which takes either layout.
:func:`recoverlib.quant.convert.publish_layout` converts an older checkpoint.

Streaming: GPTQ already works layer by layer (each layer's calibration activations feed the next), so the
streamed quantize is GPTQModel's own loop with its disk offloading (a meta shell filled from the checkpoint
module by module, finished modules written to disk) and its sharded save; recoverlib adds the crash-safe
folder, the resume after a finished quantize, and the layer-by-layer audit (:meth:`GptqBackend.load_linear`
rebuilds GPTQModel's ``TorchLinear`` from ``qweight/qzeros/scales/g_idx``). A run killed inside GPTQModel's
loop starts that loop again: it keeps no state between layers that could be resumed from; with the same seed
and texts the bytes are the same.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from recoverlib.architectures import architecture_of
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import copy_tokenizer, read_model_config
from recoverlib.module_groups import GROUP_REGEX
from recoverlib.patches import require_attr
from recoverlib.quant.backends.base import LinearStorage, QuantBackend, bias_storage
from recoverlib.quant.calibration import calibration_tokenizer
from recoverlib.quant.checkpoint import Checkpoint, disk_name, rewrite_names
from recoverlib.quant.formats import gidx_kind
from recoverlib.quant.layerwise import load_model, single_device
from recoverlib.quant.moe import preserved_transformers, split_block_class
from recoverlib.quant.plan import GroupPrecision, PrecisionPlan
from recoverlib.runtime import environ, kept_environ

# What importing gptqmodel's tokenicer sets for the whole process when unset (tokenicer/__init__.py).
TOKENICER_CACHE_VARS = ("HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_MODULES_CACHE")

CALIBRATION_BATCH = 8
# GPTQModel 7.6's QuantizeConfig for each column order (recoverlib.quant.plan.GPTQ_ORDERS); all write static
# groups. static_groups keeps desc_act in the config, which vLLM refuses: publish_gptq drops the flag.
ORDER_ARGS = {
    "group-aware": {"desc_act": False, "act_group_aware": True},
    "none": {"desc_act": False, "act_group_aware": False},
    "static-groups": {"desc_act": True, "static_groups": True, "act_group_aware": False},
}


def dynamic_rules(plan: PrecisionPlan, groups=tuple(GROUP_REGEX)) -> tuple[GroupPrecision, dict]:
    """The base precision (the feed-forward weights': experts or a dense MLP; else attention's) and
    GPTQModel ``dynamic`` rules for the other groups among ``groups`` (those the model has)."""
    base = next((p for p in (plan.experts, plan.mlp, plan.attention) if p.quantized), plan.attention)
    rules: dict[str, dict] = {}
    for group, regex in GROUP_REGEX.items():
        if group not in groups:
            continue
        prec = plan.group(group)
        if not prec.quantized:
            if group != "router":  # GPTQModel never quantizes the router unless told (see _router_tree)
                rules[f"-:{regex}"] = {}
        elif prec != base:
            rules[f"+:{regex}"] = {"bits": prec.bits, "group_size": prec.group_size}
    return base, rules


class GptqBackend(QuantBackend):
    name = "gptq"
    pip_name = "gptqmodel==7.6.0 (pip install --no-deps gptqmodel==7.6.0 plus its dependencies)"

    def validate(self, plan: PrecisionPlan) -> None:
        for group, prec in plan.groups().items():
            if prec.quantized and prec.bits not in (2, 3, 4, 8):
                raise RecoverlibError(
                    f"plan {plan.name!r}: GPTQ stores 2, 3, 4 or 8 bits ({group}: {prec.bits})"
                )
            if prec.quantized and prec.group_size is None:
                raise RecoverlibError(f"plan {plan.name!r}: GPTQ needs a group_size for {group}")
        for group in ("embeddings", "lm_head"):
            if plan.group(group).quantized:
                raise RecoverlibError(
                    f"plan {plan.name!r}: the gptq backend keeps {group} in 16 bit; use hqq"
                )
        if not (plan.attention.quantized or plan.experts.quantized or plan.mlp.quantized):
            raise RecoverlibError(f"plan {plan.name!r}: GPTQ needs attention, experts or mlp quantized")

    calibrated = True

    def write_streamed(self, job, source, record) -> Path:
        """GPTQModel's layer loop (offloading to disk), its output renamed into Mixtral's published layout in
        ``work/quantized`` (kept and reused once finished)."""
        import shutil

        folder, saved, scratch = (
            record.work / "quantized",
            record.work / "gptq-save",
            record.work / "gptq-scratch",
        )
        if "gptq" in record.done:
            return folder
        for stale in (folder, saved, scratch):
            if stale.exists():
                shutil.rmtree(stale)  # an interrupted GPTQModel run: its loop starts again
        scratch.mkdir()
        self.quantize_to(job.model_path, job.plan, job.calibration, job.seed, job.device, scratch, saved,
                          job.max_shard_bytes)
        shutil.rmtree(scratch)
        try:
            publish_gptq(saved, folder, job.plan.order == "static-groups")
        except OSError as err:
            raise RecoverlibError(f"GPTQ writing under {folder.parent}: {err.strerror or err}") from None
        shutil.rmtree(saved)
        # before the record: the audit step copies the same files again
        copy_tokenizer(job.model_path, folder)
        record.mark_folder("gptq", folder)
        return folder

    def quantize_to(self, model_path: Path, plan: PrecisionPlan, texts, seed: int, device: str, scratch: Path,
                    out: Path, max_shard_bytes: int | None) -> None:
        """Run GPTQModel's quantize on ``device`` and save its checkpoint (GPTQModel's layout) to ``out``;
        finished modules are offloaded to ``scratch/offload``, GPTQModel's logs go to ``scratch/logs``."""
        import torch

        base, rules = dynamic_rules(plan, architecture_of(read_model_config(model_path)).groups())
        tokenizer = calibration_tokenizer(model_path)
        with self._gptqmodel(router=plan.router.quantized) as (GPTQModel, QuantizeConfig, _):
            cfg = QuantizeConfig(
                bits=base.bits,
                group_size=base.group_size,
                dynamic=rules or None,
                sym=True,
                offload_to_disk=True,
                offload_to_disk_path=str(scratch / "offload"),
                **ORDER_ARGS[plan.order],
            )
            wrapper = GPTQModel.load(
                str(model_path), cfg, device=device, dtype=getattr(torch, plan.compute_dtype)
            )
            try:  # a full disk while offloading or saving is one line
                with torch.random.fork_rng(devices=[]), _logs_in(scratch / "logs"):
                    torch.manual_seed(seed)  # pins any sampling inside; the caller's RNG is left alone
                    wrapper.quantize(list(texts), batch_size=CALIBRATION_BATCH, tokenizer=tokenizer)
                # right after quantize the zeros are in the checkpoint (v1) format; save + load gives a model
                wrapper.save(str(out), max_shard_size=max_shard_bytes)
            except OSError as err:
                raise RecoverlibError(f"GPTQ writing under {out.parent}: {err.strerror or err}") from None
        (out / "quant_log.csv").unlink(missing_ok=True)

    def load(self, path: Path, plan: PrecisionPlan, device_map: str | dict | None = None):
        """The checkpoint (published or GPTQModel's names) piece by piece onto one device, through GPTQModel's
        ``TorchLinear`` (:meth:`load_linear`); its fp16 scales are kept as written (GPTQModel's own loader
        casts them to the compute dtype, which drops 3 mantissa bits in bf16)."""
        device = single_device(device_map, self.name)
        with self.session(plan, device):
            return load_model(path, plan, self, device)

    def load_published(self, path: Path, weights, compute_dtype: str, device_map: str | dict | None = None):
        """A GPTQ Mixtral recoverlib did not write (GPTQModel, AutoGPTQ; ``weights``: its
        :class:`~recoverlib.quant.formats.ServedWeights`), read by the same layer-by-layer loader with the
        checkpoint's own symmetry, act-order ``g_idx`` and bits. Plain transformers would start its experts
        from random weights; here every tensor of every layer must be in the checkpoint."""
        plan = published_plan(weights, compute_dtype)
        device = single_device(device_map, self.name)
        linears = PublishedLinears(weights.sym, weights.desc_act, weights.version == "gptq_v2")
        with self.session(plan, device):
            return load_model(path, plan, linears, device)

    def load_linear(
        self, state: dict, shape: tuple[int, int], prec: GroupPrecision, plan: PrecisionPlan, device: str
    ):
        """GPTQModel's ``TorchLinear`` from a checkpoint's (v1-format) tensors, as GPTQModel's loader builds
        it (recoverlib writes symmetric weights without act-order)."""
        return gptq_linear(state, shape, prec, device)

    def session(self, plan: PrecisionPlan, device: str):
        """GPTQModel imported, its patches to transformers undone on exit (around a layer-by-layer audit or
        load)."""
        return self._gptqmodel(router=plan.router.quantized)

    def library(self):
        """GPTQModel imported for a caller that loads through it (transformers' GPTQ path imports it via
        optimum), its patches to transformers undone on exit."""
        return self._gptqmodel(router=False)

    @contextmanager
    def _gptqmodel(self, router: bool):
        with environ(GPTQMODEL_CPU_WORKERS=str(os.cpu_count() or 1)), preserved_transformers():
            # importing gptqmodel (its tokenicer) points the Hugging Face caches at a temp folder for the
            # whole process, and every child (a server, a Ray worker) would inherit that: put them back
            with kept_environ(*TOKENICER_CACHE_VARS):
                gptqmodel = self.require("gptqmodel")
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
        if (
            not any(c.__name__ == "GPTQQuantLinear" for c in type(module).__mro__)
            or getattr(module, "qweight", None) is None
        ):
            return None
        bias = bias_storage(module)
        nbytes = sum(_nbytes(getattr(module, k)) for k in ("qweight", "qzeros", "scales", "g_idx")) + bias[1]
        return LinearStorage(
            int(module.bits),
            int(module.group_size),
            module.in_features * module.out_features + bias[0],
            nbytes,
            f"gptq/{str(module.qweight.dtype).removeprefix('torch.')}",
        )

    def linear_bytes(
        self, out_features: int, in_features: int, prec: GroupPrecision, compute_dtype: str
    ) -> int:
        groups = math.ceil(in_features / prec.group_size)
        qweight = 4 * math.ceil(in_features * prec.bits / 32) * out_features  # int32 words down the input dim
        qzeros = 4 * groups * math.ceil(out_features * prec.bits / 32)
        scales = 2 * groups * out_features  # fp16
        return qweight + qzeros + scales + 4 * in_features  # + int32 g_idx

    def bias_bytes(self, out_features: int, compute_dtype: str) -> int:
        return 2 * out_features  # GPTQModel stores a quantized linear's bias in fp16


@dataclass(frozen=True)
class PublishedLinears:
    """The layer-by-layer hooks for a published GPTQ checkpoint: its symmetry, act-order and zero-point
    format (``gptq`` v1, or GPTQModel's ``gptq_v2``) applied to every linear."""

    sym: bool
    desc_act: bool
    v2: bool

    def load_linear(self, state: dict, shape: tuple[int, int], prec: GroupPrecision, plan: PrecisionPlan,
                    device: str):
        return gptq_linear(state, shape, prec, device, self.sym, self.desc_act, self.v2)


def published_plan(weights, compute_dtype: str) -> PrecisionPlan:
    """The plan a published GPTQ checkpoint realises: each quantized group at its bits and the config's
    group size (-1: per row), computed in ``compute_dtype``."""
    size = None if weights.group_size in (None, -1) else int(weights.group_size)
    groups = {g: GroupPrecision(int(b), size) for g, b in weights.bits.items() if g != "other"}
    name = f"published {weights.describe()}"
    return PrecisionPlan("gptq", compute_dtype=compute_dtype, name=name, **groups)


def gptq_linear(state: dict, shape: tuple[int, int], prec: GroupPrecision, device: str, sym: bool = True,
                desc_act: bool = False, v2: bool = False):
    """GPTQModel's ``TorchLinear`` from one linear's ``qweight/qzeros/scales/g_idx``: the group of input
    column i is ``g_idx[i]`` (act-order or not); v1 zeros (stored minus one) are converted as GPTQModel's
    loader does."""
    import torch
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear  # imported by session()
    from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module

    module = TorchLinear(bits=prec.bits, group_size=prec.group_size or -1, sym=sym, desc_act=desc_act,
                         in_features=shape[1], out_features=shape[0], bias=False, pack_dtype=torch.int32,
                         register_buffers=False)
    missing = [k for k in ("qweight", "qzeros", "scales", "g_idx") if k not in state]
    if missing:
        raise RecoverlibError(f"gptq checkpoint: a quantized linear lacks its {missing[0]}")
    for key in ("qweight", "qzeros", "scales", "g_idx"):
        module.register_buffer(key, state.pop(key).to(device))
    # register_buffers=True would allocate every buffer; a bias (Qwen2's q/k/v) is kept in fp16 as written
    bias = state.pop("bias", None)
    if bias is None:
        module.bias = None
    else:
        module.register_buffer("bias", bias.to(device))
    if state:
        raise RecoverlibError(
            f"gptq checkpoint: unexpected tensors {sorted(state)} beside a quantized linear"
        )
    if not v2:
        convert_gptq_v1_to_v2_format_module(module, prec.bits, torch.int32)
    module.post_init()
    return module.eval()


def publish_gptq(saved: Path, out: Path, static_groups: bool = False) -> None:
    """GPTQModel's saved checkpoint ``saved`` renamed into Mixtral's published layout in ``out``, shard by
    shard (each source shard removed once copied); its config loses the scratch path GPTQModel records, and
    with ``static_groups`` the act-order flag (checked on the written g_idx: each is i // group_size)."""
    import json

    rewrite_names(saved, out, disk_name, consume=True)
    if static_groups:
        sizes = {json.loads((out / "config.json").read_text())["quantization_config"]["group_size"]}
        if gidx_kind(Checkpoint.open(out), sizes.pop()) == "permuted":
            raise RecoverlibError(f"{out}: GPTQModel's static groups wrote a permuted g_idx")
    (out / "quant_log.csv").unlink(missing_ok=True)
    for name, key in (("config.json", "quantization_config"), ("quantize_config.json", None)):
        file = out / name
        if file.is_file():
            data = json.loads(file.read_text())
            qc = data[key] if key else data
            (qc.get("meta") or {}).pop("offload_to_disk_path", None)  # a folder of the finished run, now gone
            if static_groups:
                qc["desc_act"] = False  # the groups are static: vLLM refuses the flag, which changes nothing
            file.write_text(json.dumps(data, indent=2) + "\n")


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
    tree = [
        dict(x) if isinstance(x, dict) else x for x in require_attr("gptq-router-tree", base, "module_tree")
    ]
    # The decoder layer's entry is the dict naming the MoE block ("mlp|block_sparse_moe:moe:?" in 7.6.0).
    found = [
        (layer, key) for layer in tree if isinstance(layer, dict) for key in layer if key.startswith("mlp")
    ]
    if (
        len(found) != 1
        or not isinstance(found[0][0][found[0][1]], dict)
        or "gate" not in found[0][0][found[0][1]]
    ):
        raise RecoverlibError(
            "gptqmodel's Mixtral module tree has changed (patch 'gptq-router-tree', tested on "
            "7.6.0): quantizing the router is not possible with this version; keep the router"
        )
    layer, moe_key = found[0]
    layer[moe_key] = {**layer[moe_key], "gate": ("gate",)}
    return type("RouterMixtralQModel", (base,), {"module_tree": tree})


def _nbytes(t) -> int:
    return t.numel() * t.element_size()
