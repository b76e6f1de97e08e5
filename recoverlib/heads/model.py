"""A learned head on the recovery model: the same base causal LM with a LoRA and a linear head on the last
token's hidden state.

Two kinds, after the competition's 3rd and 2nd/5th places:

- ``verifier``: reads the recovery prompt of a pair followed by a candidate rewrite prompt (rendered exactly
  as the model's own completion) and predicts the metric score that candidate gets against the truth (one
  output, trained with a squared error);
- ``embedding``: reads the recovery prompt of a pair and predicts the target prompt's embedding under the
  metric's embedder (``dim`` outputs, trained with a cosine loss); a strategy then reranks candidates by it.

A head folder is a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``) plus
``head.safetensors`` (the linear head) and ``recoverlib_head.json`` (:class:`HeadInfo`). It is served through
the HF engine's loader (:func:`recoverlib.engines.hf.load_causal_lm`), so any base the HF engine loads
(quantized or not) can carry one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recoverlib.engines.hf import load_causal_lm
from recoverlib.errors import RecoverlibError
from recoverlib.prompt import RecoveryTemplate
from recoverlib.training.rows import dedicated_pad

HEAD_META = "recoverlib_head.json"
HEAD_WEIGHTS = "head.safetensors"
KINDS = ("verifier", "embedding")
CANDIDATE_TOKENS = 64  # a candidate's tokens kept after the recovery prompt (the verifier's input)


@dataclass(frozen=True)
class HeadInfo:
    """What a head folder records: its kind, outputs, the metric embedder it was trained for (the verifier's
    scores and the embedding's space depend on it), the base it sits on and how inputs were rendered."""

    kind: str
    dim: int
    embedder: str
    base: str
    template: str
    max_length: int

    def __post_init__(self):
        if self.kind not in KINDS:
            raise RecoverlibError(f"head kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.dim < 1 or self.max_length < 32:
            raise RecoverlibError(
                f"head: dim must be >= 1 and max_length >= 32 (got {self.dim}, {self.max_length})"
            )


def read_info(folder: str | Path) -> HeadInfo:
    """The :class:`HeadInfo` of a head folder; one line when it is not one."""
    meta = Path(folder) / HEAD_META
    if not meta.is_file():
        raise RecoverlibError(
            f"{folder} is not a head folder (no {HEAD_META}); make one with "
            "`recoverlib train --head verifier|embedding`"
        )
    try:
        return HeadInfo(**json.loads(meta.read_text()))
    except (TypeError, json.JSONDecodeError) as err:
        raise RecoverlibError(f"{meta}: not a head description ({err})") from None


def compute_dtype() -> str:
    """float32 on CPU (what the tiny heads train in), bfloat16 on CUDA."""
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


def load_base_model(model_path: str | Path):
    """The base causal LM through the HF engine's loader (plain, recoverlib-quantized or GPTQ checkpoints)."""
    return load_causal_lm(Path(model_path), compute_dtype())


def load_tokenizer(model_path: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dedicated_pad(tokenizer)
    return tokenizer


def render_inputs(
    tokenizer,
    template: RecoveryTemplate,
    pairs: Sequence[tuple[str, str]],
    candidates: Sequence[str] | None,
    max_length: int,
) -> list[list[int]]:
    """Token ids per input: the pair's recovery prompt (fitted to ``max_length`` less the candidate's room),
    then for a verifier the candidate as the model's completion, ended by eos."""
    room = CANDIDATE_TOKENS + 2 if candidates is not None else 0
    out = []
    for k, (original, rewritten) in enumerate(pairs):
        prompt = template.render_fitted(tokenizer, original, rewritten, max_length - room)[0]
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if candidates is not None:
            tail = tokenizer(template.completion(candidates[k]), add_special_tokens=False)["input_ids"]
            ids = ids + tail[:CANDIDATE_TOKENS] + [tokenizer.eos_token_id]
        out.append(ids)
    return out


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


@dataclass
class LoadedHead:
    """A head ready to predict: model (LoRA applied), linear head, tokenizer, template, info."""

    model: object
    head: object
    tokenizer: object
    template: RecoveryTemplate
    info: HeadInfo

    def predict(
        self, pairs: Sequence[tuple[str, str]], candidates: Sequence[str] | None = None, batch_size: int = 32
    ) -> np.ndarray:
        """(n,) predicted scores (verifier: give ``candidates``, one per pair) or (n, dim) predicted
        embeddings, unnormalised (embedding head)."""
        import torch

        if (candidates is None) != (self.info.kind == "embedding"):
            raise RecoverlibError(
                f"a {self.info.kind} head {'takes' if candidates is None else 'takes no'} candidates"
            )
        inputs = render_inputs(self.tokenizer, self.template, pairs, candidates, self.info.max_length)
        order = np.argsort([len(x) for x in inputs], kind="stable")  # similar lengths share a batch
        out = np.zeros((len(inputs), self.info.dim), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                feats = pooled(self.model, [inputs[i] for i in idx], self.tokenizer.pad_token_id)
                out[idx] = self.head(feats).float().cpu().numpy()
        return out[:, 0] if self.info.kind == "verifier" else out


def load_head(folder: str | Path, model_path: str | Path | None = None) -> LoadedHead:
    """Load a head folder onto its base (``model_path``, default the base it records)."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    info = read_info(folder)
    base = Path(model_path or info.base)
    if not (base / "config.json").is_file():
        raise RecoverlibError(f"head {folder}: its base {base} is not a model folder; pass the base's path")
    tokenizer = load_tokenizer(base)
    model = PeftModel.from_pretrained(load_base_model(base), str(folder)).eval()
    weights = load_file(str(Path(folder) / HEAD_WEIGHTS))
    head = torch.nn.Linear(weights["weight"].shape[1], info.dim)
    head.load_state_dict(weights)
    head.to(next(model.parameters()).device).eval()
    template = RecoveryTemplate(kind=info.template)
    return LoadedHead(model, head, tokenizer, template, info)


def save_head(folder: Path, model, head, info: HeadInfo) -> None:
    """Write a head folder: the LoRA (PEFT), the linear head and :class:`HeadInfo`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    save_file(
        {k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()},
        str(folder / HEAD_WEIGHTS),
    )
    (folder / HEAD_META).write_text(json.dumps(asdict(info), indent=1) + "\n")
