"""HFEngine: transformers + PEFT, the reference engine, and the one for bases vLLM cannot load here.

``dynamic``: adapters are loaded once into one ``PeftModel`` and switched with ``set_adapter`` (the seed's
way); the base is served with the adapters disabled. Where an adapter puts LoRA on Mixtral's experts or router
(in any PEFT layout: transformers 4's ``block_sparse_moe.experts.E.w1``, transformers 5's fused
``target_parameters``), the base is built with one ``nn.Linear`` per expert (:func:`recoverlib.quant.moe.
split_moe`, the same math as transformers' fused block) and each adapter is loaded under those names (an exact
rename, :mod:`recoverlib.adapter_layouts`), so every expert gets its own LoRA and several adapters with
different targets live in one ``PeftModel``. ``merged``: each adapter's merged weights (see
``merge.py``) are copied into the plain model while its prompts are generated, then the base weights are
copied back (exact). ``auto`` is ``merged`` where merging is exact (a plain base, plain LoRA adapters), else
``dynamic``: merged weights generated 1.10-1.14x as fast as PEFT's layers on the 2-core CPU, 3.2-3.4x on an
H100. Sampling is seeded per (batch, adapter) inside ``torch.random.fork_rng``, so the caller's seed decides
the output and the global RNG is left as it was. A batch's seed comes from its first prompt's key, so the
same prompts batched the same way give the same samples in any call (the pipeline chunks rows at fixed input
positions, so a resumed run batches alike).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

from tqdm.auto import tqdm

from recoverlib.adapters import swap_merge_problem
from recoverlib.engines.base import (
    DEFAULT_CONTEXT_CAP,
    EngineConfig,
    LocalEngine,
    Prompts,
    Samples,
    SamplingConfig,
    decode_completions,
    repeat_greedy,
    resolve_max_model_len,
)
from recoverlib.engines.device import Device, current_device, resolve_dtype
from recoverlib.engines.lora_mode import merge_blocker
from recoverlib.engines.merge import MergeCache, serving_merged
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import checkpoint_dtype
from recoverlib.quant.api import load_quantized
from recoverlib.quant.backends import get_backend
from recoverlib.quant.checkpoint import memory_name
from recoverlib.quant.formats import ServedWeights, find_quant_config, transformers_problem
from recoverlib.quant.meta import META_FILE, check_plain_loadable, is_quantized
from recoverlib.quant.moe import split_moe

log = logging.getLogger("recoverlib")


def load_causal_lm(model_path: Path, dtype: str, split: bool = False):
    """An HF causal LM for inference, loaded as the checkpoint's own library would. Checkpoints made by
    ``recoverlib quantize`` load through their backend (its ``recoverlib_quant.json`` says which; their
    experts are split) and are audited against their plan; a published GPTQ Mixtral (GPTQModel's or the
    published expert names, any act-order, symmetry and bits) through the same layer-by-layer loader, since
    plain transformers would start its experts from random weights; others through transformers, given the
    quantization config wherever the checkpoint keeps it (AutoGPTQ's ``quantize_config.json`` included), with
    one ``nn.Linear`` per Mixtral expert when ``split``."""
    import torch
    from transformers import AutoModelForCausalLM

    # On a CUDA machine let accelerate place the layers (one or several GPUs); on CPU stay there.
    device_map = "auto" if torch.cuda.is_available() else None
    if (Path(model_path) / META_FILE).is_file():
        return load_quantized(model_path, device_map=device_map).eval()  # compute dtype is the plan's
    weights = ServedWeights.from_folder(model_path)
    if weights.method == "gptq" and weights.model_type == "mixtral":
        return get_backend("gptq").load_published(Path(model_path), weights, dtype, device_map).eval()
    check_plain_loadable(model_path)
    problem = transformers_problem(weights)
    if problem:
        raise RecoverlibError(problem)
    # transformers' GPTQ path imports GPTQModel (through optimum), which patches transformers for the process
    library = get_backend("gptq").library() if weights.method == "gptq" else nullcontext()
    with library, split_moe() if split else nullcontext():
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype), device_map=device_map, use_safetensors=True,
            **transformers_quant_config(model_path, weights),
        )  # never a pickle
    return model.eval()


def transformers_quant_config(model_path: Path, weights: ServedWeights) -> dict:
    """The config transformers needs when the checkpoint keeps its quantization config outside
    ``config.json`` (which is all transformers reads; AutoGPTQ's ``quantize_config.json``): the model config
    with it put in, as a pre-quantized checkpoint's (a ``quantization_config`` argument would ask transformers
    to quantize)."""
    if weights.method is None or weights.config_file in (None, "config.json"):
        return {}
    from transformers import AutoConfig

    qc = find_quant_config(Path(model_path))[0]
    config = AutoConfig.from_pretrained(model_path)
    config.quantization_config = {"quant_method": weights.method, **qc}
    return {"config": config}


def has_split_experts(model) -> bool:
    """Whether ``model``'s experts are one module per expert (``mlp.experts.0.gate_proj``)."""
    return any(name.endswith("experts.0.gate_proj") for name, _ in model.named_modules())


def compute_dtype(requested: str, device: Device, checkpoint: str | None) -> str:
    """:func:`resolve_dtype`, except that ``auto`` on a CPU computes in float32.

    Why: on the CPU, 16-bit matmuls go through oneDNN, and with prompt shapes that change from batch to batch
    its memory grew without bound (tiny Mixtral, batches of 64 prompts of 5-200 words: +45 MB RSS per 256
    prompts in bf16, flat in float32; disabling oneDNN stopped it too but ran 3.6x slower). ``--dtype
    bfloat16`` still asks for bf16.
    """
    dtype = resolve_dtype(requested, device, checkpoint)
    if requested == "auto" and device.is_cpu and dtype != "float32":
        log.info("hf engine on CPU: computing in float32 (16-bit on CPU grows memory with prompt shapes;"
                 " --dtype %s to force it)", dtype)
        return "float32"
    return dtype


class HFEngine(LocalEngine):
    """transformers ``generate`` with PEFT adapters switched per adapter; prompts batched with left
    padding."""

    name = "hf"

    def __init__(
        self,
        model: str | Path,
        adapters: Mapping[str, str | Path] | None = None,
        config: EngineConfig | None = None,
    ):
        super().__init__(model, adapters, config)
        from transformers import AutoTokenizer

        if self.config.tensor_parallel_size > 1:
            raise RecoverlibError(
                "the hf engine spreads layers over all GPUs by itself; tensor parallel is vLLM's:"
                " use --engine vllm or --tensor-parallel-size 1"
            )

        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self.dtype = compute_dtype(self.config.dtype, current_device(), checkpoint_dtype(self.model_path))
        # LoRA per expert (or on the router) needs the experts as modules; the fused model holds them as
        # 3-D parameters
        moe = sorted(a.name for a in self.adapters.values() if a.layout != "linear")
        self._model = load_causal_lm(self.model_path, self.dtype, split=bool(moe))
        self._split = has_split_experts(self._model)
        if moe and not self._split:
            raise RecoverlibError(f"adapter(s) {moe} put LoRA on experts, and {self.model_path} did not load"
                                  " with one module per expert")
        self.lora_mode = self._resolve_lora_mode()
        # A quantized base takes merged adapters only through PEFT's merge (dequantize, add, requantize).
        self._peft_merge = self.lora_mode == "merged" and is_quantized(self.model_path)
        blocker = merge_blocker(self._peft_merge, self.config.dequantized_merge)
        if blocker:
            raise RecoverlibError(f"lora mode merged: {blocker}")
        if self.lora_mode == "merged" and not self._peft_merge:
            self._merges = MergeCache(self.model_path, self.config.merge_cache)
        elif self.adapters:
            from peft import PeftModel

            names = sorted(self.adapters)
            self._model = PeftModel.from_pretrained(
                self._model, self._peft_folder(names[0]), adapter_name=names[0]
            )
            for name in names[1:]:
                self._model.load_adapter(self._peft_folder(name), adapter_name=name)
            self._model.eval()

    def _peft_folder(self, adapter: str) -> str:
        """The adapter's PEFT folder under the names this model has (split experts: converted, cached)."""
        info = self.adapters[adapter]
        return str(info.served_path("split") if self._split else info.path)

    def _resolve_lora_mode(self) -> str:
        """``auto``: merged weights where merging is exact, else PEFT's adapter layers.

        Merged weights generated faster than PEFT's LoRA layers in every measurement here: 1.10-1.14x on the
        2-core CPU and 3.2-3.4x on an H100 (tiny Mixtral, 48 rows x 2 adapters x 4 samples x 32 tokens).
        """
        if self.config.lora_mode != "auto":
            return self.config.lora_mode
        if not self.adapters:
            return "dynamic"
        blocker = "the base is quantized" if is_quantized(self.model_path) else None
        blocker = blocker or next(filter(None, map(swap_merge_problem, self.adapters.values())), None)
        mode = "dynamic" if blocker else "merged"
        log.info(
            "lora mode auto -> %s (hf engine%s)", mode, f": {blocker}" if blocker else ": merging is exact"
        )
        return mode

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def model(self):
        return self._model

    @property
    def max_model_len(self) -> int:
        native = getattr(self._model.config, "max_position_embeddings", DEFAULT_CONTEXT_CAP)
        return resolve_max_model_len(self.config.max_model_len, native)

    def _adapter_context(self, adapter: str | None):
        """While generating for ``adapter`` (None = base): the right weights or PEFT adapter are active."""
        peft_wrapped = self.adapters and (self.lora_mode == "dynamic" or self._peft_merge)
        if adapter is None:
            return self._model.disable_adapter() if peft_wrapped else nullcontext()
        if self._peft_merge:
            return self._dequantized_merged(adapter)
        if self.lora_mode == "merged":
            return self._merged(adapter)
        self._model.set_adapter(adapter)
        return nullcontext()

    @contextmanager
    def _dequantized_merged(self, adapter: str):
        """PEFT merges into the quantized layers and unmerges after; both round, so the base drifts
        slightly."""
        self._model.set_adapter(adapter)
        try:
            self._model.merge_adapter()
        except (NotImplementedError, ValueError, TypeError) as err:
            raise RecoverlibError(
                f"dequantized merge of {adapter!r} failed ({err}); use --lora-mode dynamic"
            ) from None
        try:
            yield
        finally:
            self._model.unmerge_adapter()

    def _merged(self, adapter: str):
        """Hold ``adapter``'s merged weights in the model; put the base weights back after."""
        import torch

        info, dtype = self.adapters[adapter], getattr(torch, self.dtype)
        params = dict(self._model.named_parameters())
        # merged tensors carry checkpoint names (block_sparse_moe.experts.0.w1); a split model calls that one
        # mlp.experts.0.gate_proj
        name = memory_name if self._split else str

        def load(tensors: dict) -> None:
            with torch.no_grad():
                for k, v in tensors.items():
                    params[name(k)].copy_(v)

        # e.g. DoRA: a whole merged copy (merged through PEFT) is served instead
        return serving_merged(
            self._merges,
            info,
            dtype,
            swap_merge_problem(info) is not None,
            restart=self._serving_model,
            load=load,
            read_base=lambda names: {k: params[name(k)].detach().clone() for k in names},
        )

    @contextmanager
    def _serving_model(self, folder: Path):
        """A whole merged model in place of the base while generating."""
        base, self._model = self._model, load_causal_lm(folder, self.dtype, split=self._split)
        try:
            yield
        finally:
            self._model = base

    @classmethod
    def samples_kind(cls, config, sampling: SamplingConfig, chunk_rows: int) -> str:
        """A batch is seeded by its first row: batches start every ``batch_size`` rows of a chunk."""
        batch = (config or cls.config_type()).batch_size
        grid = f"{batch} rows" if chunk_rows % batch == 0 else f"{batch} rows in chunks of {chunk_rows}"
        return f"hf, seeded per batch of {grid}"

    def generate(self, prompts: Prompts, sampling: SamplingConfig, adapters: Sequence[str | None],
                 keys: Sequence[int] | None = None) -> Samples:
        requests = self._requests(prompts, adapters)
        bar = tqdm(total=sum(map(len, requests.values())), desc="generate (hf)", unit="prompt")
        out: Samples = {}
        for adapter, adapter_prompts in requests.items():
            out[adapter] = []
            for start in range(0, len(adapter_prompts), self.config.batch_size):
                batch = list(adapter_prompts[start : start + self.config.batch_size])
                # a batch is seeded by its first prompt
                key = self.prompt_keys(keys, len(adapter_prompts))[start]
                out[adapter] += self._generate_batch(
                    batch, sampling, adapter, seed=sampling.request_seed(key, self.adapter_index(adapter))
                )
                bar.update(len(batch))
        bar.close()
        return out

    def _generate_batch(
        self, batch: list[str], sampling: SamplingConfig, adapter: str | None, seed: int
    ) -> list[list[str]]:
        import torch

        enc = self._tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self._model.device
        )
        with self._adapter_context(adapter), torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ids = self._model.generate(**enc, **self._generate_kwargs(sampling))
        decoded = decode_completions(self._tokenizer, ids[:, enc["input_ids"].shape[1] :])
        k = sampling.draws
        return [repeat_greedy(decoded[i * k : (i + 1) * k], sampling) for i in range(len(batch))]

    def _generate_kwargs(self, sampling: SamplingConfig) -> dict:
        common = {
            "max_new_tokens": sampling.max_new_tokens,
            "min_new_tokens": sampling.max_new_tokens if sampling.ignore_eos else 0,
            "pad_token_id": self._tokenizer.pad_token_id,
            "eos_token_id": self._tokenizer.eos_token_id,
        }
        if sampling.greedy:
            return {**common, "do_sample": False, "num_return_sequences": 1}
        return {
            **common,
            "do_sample": True,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": 0,
            "num_return_sequences": sampling.samples,
        }

    def close(self) -> None:
        import gc

        self.__dict__.pop("_model", None)
        gc.collect()
