"""A learned head on the recovery model: the same base causal LM with a LoRA and a linear head on the last
token's hidden state.

Two kinds, after the competition's 3rd and 2nd/5th places:

- ``verifier``: reads the recovery prompt of a pair followed by a candidate rewrite prompt (rendered exactly
  as the model's own completion) and predicts the metric score that candidate gets against the truth (one
  output, trained with a squared error);
- ``embedding``: reads the recovery prompt of a pair and predicts the target prompt's embedding under the
  metric's embedder (``dim`` outputs, trained with a cosine loss); a strategy then reranks candidates by it.

A head folder is a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``) plus
``head.safetensors`` (the linear head) and ``recoverlib_head.json`` (:class:`HeadInfo`). It is
served by a head engine (:mod:`recoverlib.heads.engines`): ``hf``, through the HF engine's loader
(:func:`recoverlib.engines.hf.load_causal_lm`), so any base the HF engine loads (quantized or not) can carry
one, or ``vllm``, vLLM's pooling runner with the head's LoRA per request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recoverlib.engines.hf import load_causal_lm
from recoverlib.errors import RecoverlibError
from recoverlib.heads.engines import DEFAULT_HEAD_ENGINE, HeadEngine, make_head_engine
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


@dataclass
class LoadedHead:
    """A head ready to predict: the engine serving its LoRA (under ``name``), linear head, tokenizer,
    template, info."""

    engine: HeadEngine
    name: str
    head: object
    tokenizer: object
    template: RecoveryTemplate
    info: HeadInfo

    def predict(
        self, pairs: Sequence[tuple[str, str]], candidates: Sequence[str] | None = None
    ) -> np.ndarray:
        """(n,) predicted scores (verifier: give ``candidates``, one per pair) or (n, dim) predicted
        embeddings, unnormalised (embedding head)."""
        import torch

        if (candidates is None) != (self.info.kind == "embedding"):
            raise RecoverlibError(
                f"a {self.info.kind} head {'takes' if candidates is None else 'takes no'} candidates"
            )
        if not pairs:
            return np.zeros((0,) if self.info.kind == "verifier" else (0, self.info.dim), dtype=np.float32)
        inputs = render_inputs(self.tokenizer, self.template, pairs, candidates, self.info.max_length)
        feats = torch.from_numpy(self.engine.last_hidden(self.name, inputs))
        with torch.no_grad():
            out = self.head(feats.to(self.head.weight.device)).float().cpu().numpy()
        return out[:, 0] if self.info.kind == "verifier" else out


def load_head(
    folder: str | Path, model_path: str | Path | None = None, engine: str | HeadEngine = DEFAULT_HEAD_ENGINE
) -> LoadedHead:
    """Load a head folder onto its base (``model_path``, default the base it records), served by the head
    engine ``engine`` (a name, or a running engine on that base that other heads share)."""
    import torch
    from safetensors.torch import load_file

    info = read_info(folder)
    base = Path(model_path or info.base)
    if not (base / "config.json").is_file():
        raise RecoverlibError(f"head {folder}: its base {base} is not a model folder; pass the base's path")
    if isinstance(engine, str):
        engine = make_head_engine(engine, base)
    elif engine.base.resolve() != base.resolve():
        raise RecoverlibError(
            f"head {folder} sits on {base}; the {engine.name} head engine given serves {engine.base}"
        )
    # one name per folder, usable as a PEFT adapter name (no dots) and a vLLM LoRA name
    name = "head_" + hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:12]
    engine.add(name, Path(folder), info.max_length)
    weights = load_file(str(Path(folder) / HEAD_WEIGHTS))
    head = torch.nn.Linear(weights["weight"].shape[1], info.dim)
    head.load_state_dict(weights)
    head.eval()
    return LoadedHead(engine, name, head, load_tokenizer(base), RecoveryTemplate(kind=info.template), info)


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
