"""``hf`` head engine: the base through the HF engine's loader (plain, recoverlib-quantized or GPTQ), heads'
LoRAs as named PEFT adapters on it, the decoder alone run (no vocabulary projection)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recoverlib.heads.model import load_base_model, load_tokenizer

BATCH_SIZE = 32  # inputs per forward (sorted by length first, so a batch pads little)


def pooled(model, batch: Sequence[Sequence[int]], pad_id: int):
    """(batch, hidden) last-token hidden states of the decoder (LoRA applied), right padding."""
    import torch

    device = next(model.parameters()).device
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
    for i, x in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    # the decoder alone: no vocabulary projection (the LM head) is computed
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    last = mask.sum(dim=1) - 1
    return hidden[torch.arange(len(batch), device=device), last].float()


class HFHeadEngine:
    """transformers + PEFT: the reference head engine (see the module docstring)."""

    name = "hf"

    def __init__(self, base: Path):
        self.base = Path(base)
        self.pad_id = load_tokenizer(self.base).pad_token_id
        self.model = None  # a PeftModel once the first head is added

    def add(self, name: str, folder: Path, max_length: int) -> None:
        """Load the head LoRA in ``folder`` as adapter ``name`` (the base is loaded with the first)."""
        from peft import PeftModel

        if self.model is None:
            base = load_base_model(self.base)
            self.model = PeftModel.from_pretrained(base, str(folder), adapter_name=name).eval()
        elif name not in self.model.peft_config:
            self.model.load_adapter(str(folder), adapter_name=name)
            self.model.eval()

    def last_hidden(self, name: str, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        """Last-token hidden states with adapter ``name`` active, in batches of similar lengths."""
        import torch

        self.model.set_adapter(name)
        order = np.argsort([len(x) for x in inputs], kind="stable")
        out = None
        with torch.no_grad():
            for start in range(0, len(order), BATCH_SIZE):
                idx = order[start : start + BATCH_SIZE]
                feats = pooled(self.model, [inputs[i] for i in idx], self.pad_id).cpu().numpy()
                if out is None:
                    out = np.zeros((len(inputs), feats.shape[1]), dtype=np.float32)
                out[idx] = feats
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)

    def close(self) -> None:
        self.model = None
