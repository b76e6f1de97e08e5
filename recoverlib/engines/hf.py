"""HFEngine: transformers + PEFT, the reference engine, and the one for bases vLLM cannot load here.

Adapters are loaded once into one ``PeftModel`` and switched with ``set_adapter`` (the seed's way); the base
is served with the adapters disabled. Sampling is seeded per (batch, adapter) inside ``torch.random.fork_rng``,
so the caller's seed decides the output and the global RNG is left as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

from tqdm.auto import tqdm

from recoverlib.engines.base import Engine, EngineConfig, SamplingConfig, Samples
from recoverlib.engines.registry import register_engine


def load_causal_lm(model_path: Path, dtype: str):
    """An HF causal LM for inference. Checkpoints made by ``recoverlib quantize`` load through their backend
    (its ``recoverlib_quant.json`` says which) and are audited against their plan; others through transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    from recoverlib.quant.api import META_FILE, check_plain_loadable, load_quantized

    if (Path(model_path) / META_FILE).is_file():
        return load_quantized(model_path).eval()  # compute dtype is the plan's
    check_plain_loadable(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    return model.eval()


@register_engine("hf")
class HFEngine(Engine):
    """transformers ``generate`` with PEFT adapters switched per adapter; prompts batched with left padding."""

    def __init__(self, model: str | Path, adapters: Mapping[str, str | Path] | None = None, config: EngineConfig | None = None):
        super().__init__(model, adapters, config)
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = load_causal_lm(self.model_path, self.config.dtype)
        if self.adapters:
            from peft import PeftModel

            names = sorted(self.adapters)
            self._model = PeftModel.from_pretrained(self._model, str(self.adapters[names[0]].path), adapter_name=names[0])
            for name in names[1:]:
                self._model.load_adapter(str(self.adapters[name].path), adapter_name=name)
            self._model.eval()

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def model(self):
        return self._model

    @property
    def max_model_len(self) -> int:
        native = getattr(self._model.config, "max_position_embeddings", 4096)
        return min(self.config.max_model_len or 4096, native)

    def _adapter_context(self, adapter: str | None):
        if not self.adapters:
            return nullcontext()
        if adapter is None:
            return self._model.disable_adapter()
        self._model.set_adapter(adapter)
        return nullcontext()

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig, adapters: Sequence[str | None]) -> Samples:
        import torch

        self._check_requested(adapters)
        order = sorted(self.adapters)
        bs = self.config.batch_size
        out: Samples = {}
        bar = tqdm(total=len(prompts) * len(adapters), desc="generate (hf)", unit="prompt")
        for adapter in adapters:
            a_index = 0 if adapter is None else order.index(adapter) + 1
            texts: list[list[str]] = []
            for start in range(0, len(prompts), bs):
                batch = list(prompts[start : start + bs])
                enc = self._tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
                with self._adapter_context(adapter), torch.no_grad(), torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sampling.request_seed(start, a_index))
                    ids = self._model.generate(**enc, **self._generate_kwargs(sampling))
                new = ids[:, enc["input_ids"].shape[1] :]
                decoded = self._tokenizer.batch_decode(new, skip_special_tokens=True)
                k = 1 if sampling.greedy else sampling.n
                texts += [decoded[i * k : (i + 1) * k] * (sampling.n // k) for i in range(len(batch))]
                bar.update(len(batch))
            out[adapter] = texts
        bar.close()
        return out

    def _generate_kwargs(self, sampling: SamplingConfig) -> dict:
        common = {
            "max_new_tokens": sampling.max_new_tokens,
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
            "num_return_sequences": sampling.n,
        }

    def close(self) -> None:
        import gc

        self.__dict__.pop("_model", None)
        gc.collect()
