"""The recovery prompt: one template for inference and fine-tuning, truncation, and cleaning generations.

A recovery prompt is one user turn (instruction + original text + rewritten text) followed by a fixed response
prefix; the model continues after the prefix with the rewrite prompt it believes was used. Two kinds:

- ``chat``: the user turn through the tokenizer's chat template (instruct models, the seed's recipe);
- ``plain``: the same text with no chat markup, after the tokenizer's BOS (base models such as
  Mixtral-8x7B-v0.1 are published without a chat template)::

      <s>Below are an original text and ... (INSTRUCTION)

      Original text:
      ...

      Rewritten text:
      ...

      The most likely text prompt given to transform the original text into the rewritten text was:

``auto`` (the default) is ``chat`` where the tokenizer has a chat template, else ``plain``. Training
(completion-only loss), both engines and GPTQ calibration render rows through :class:`RecoveryTemplate`, so
what a model is trained on is exactly what it is served; an adapter records the kind it was trained with
(:func:`template_for_adapter`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

from recoverlib.errors import RecoverlibError

log = logging.getLogger("recoverlib")

RESPONSE_PREFIX = (
    "The most likely text prompt given to transform the original text into the rewritten text was:"
)
INSTRUCTION = (
    "Below are an original text and the text an LLM rewrote from it. "
    "Recover the instruction (the rewrite prompt) that was given to the LLM."
)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
TEMPLATE_KINDS = ("auto", "chat", "plain")


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template (base checkpoints usually do not)."""
    return bool(getattr(tokenizer, "chat_template", None))


@dataclass(frozen=True)
class RecoveryTemplate:
    """How a row becomes a prompt. Defaults follow the seed's fine-tuning recipe.

    ``kind``: ``chat``, ``plain`` or ``auto`` (see the module docstring); resolve ``auto`` once per run with
    :meth:`for_tokenizer`, which says on stderr when it picks ``plain``.
    """

    instruction: str = INSTRUCTION
    response_prefix: str = RESPONSE_PREFIX
    ellipsis: str = " ..."
    kind: str = "auto"

    def __post_init__(self):
        if self.kind not in TEMPLATE_KINDS:
            raise RecoverlibError(f"template {self.kind!r}: choose one of {', '.join(TEMPLATE_KINDS)}")

    def for_tokenizer(self, tokenizer, what: str = "the model") -> RecoveryTemplate:
        """This template with ``kind`` settled for ``tokenizer``: ``auto`` becomes ``chat`` or ``plain`` (a
        one-line note when plain); ``chat`` on a tokenizer without a chat template is a one-line error."""
        chat = has_chat_template(tokenizer)
        if self.kind == "chat" and not chat:
            raise RecoverlibError(
                f"{what} has no chat template (a base model?): use --template plain or auto"
            )
        if self.kind != "auto":
            return self
        if not chat:
            log.warning("%s has no chat template: using the plain recovery prompt (see --template)", what)
        return replace(self, kind="chat" if chat else "plain")

    def user_message(self, original_text: str, rewritten_text: str) -> str:
        return (
            f"{self.instruction}\n\nOriginal text:\n{original_text}\n\nRewritten text:\n{rewritten_text}"
        )

    def render(self, tokenizer, original_text: str, rewritten_text: str, prime: str = "") -> str:
        """The full prompt string, ending right where the model must start writing.

        ``prime`` is an opening the prediction is forced to start with (e.g. "Rewrite"); it is part of the
        prompt, and :func:`clean_prediction` keeps it in the prediction.
        """
        user = self.user_message(original_text, rewritten_text)
        if self.kind == "chat" or (self.kind == "auto" and has_chat_template(tokenizer)):
            messages = [{"role": "user", "content": user}]
            head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # plain: what a base model reads; its BOS is text here, as a chat template writes it
            head = f"{tokenizer.bos_token or ''}{user}\n\n"
        text = head + self.response_prefix
        return f"{text} {prime}" if prime else text

    def render_fitted(
        self, tokenizer, original_text: str, rewritten_text: str, max_prompt_tokens: int, prime: str = ""
    ) -> tuple[str, bool]:
        """Render, truncating the two texts so the prompt fits ``max_prompt_tokens`` tokens.

        Returns ``(prompt, truncated)``. The longer text is cut first, each keeps at least half the budget;
        a cut text ends with ``self.ellipsis``. Never raises for long inputs: if even empty texts do not fit,
        both texts are dropped and the caller is told by ``truncated``.
        """
        prompt = self.render(tokenizer, original_text, rewritten_text, prime)
        if _n_tokens(tokenizer, prompt) <= max_prompt_tokens:
            return prompt, False
        overhead = _n_tokens(tokenizer, self.render(tokenizer, "", "", prime))
        budget = max(0, max_prompt_tokens - overhead - 2 * _n_tokens(tokenizer, self.ellipsis))
        ids = [_encode(tokenizer, t) for t in (original_text, rewritten_text)]
        keep = _split_budget([len(x) for x in ids], budget)
        texts = [
            tokenizer.decode(x[:k]) + (self.ellipsis if k < len(x) else "")
            for x, k in zip(ids, keep, strict=True)
        ]
        prompt = self.render(tokenizer, texts[0], texts[1], prime)
        # Re-tokenising decoded text can merge differently; shave until it fits.
        while _n_tokens(tokenizer, prompt) > max_prompt_tokens and any(keep):
            i = 0 if keep[0] >= keep[1] else 1
            keep[i] = max(0, keep[i] - 4)
            texts[i] = tokenizer.decode(ids[i][: keep[i]]) + self.ellipsis
            prompt = self.render(tokenizer, texts[0], texts[1], prime)
        return prompt, True

    def completion(self, rewrite_prompt: str, prime: str = "") -> str:
        """The training target that follows :meth:`render` (without eos; the trainer appends it).

        Unprimed: ``" " + prompt``. Primed: the prompt must start with ``prime`` (see :func:`has_prime`) and
        the target is what follows it, separator included (``"Rewrite the text."`` -> ``" the text."``), so
        prompt + completion is the same string as unprimed and tokenizes the same way.
        """
        text = rewrite_prompt.strip()
        if not prime:
            return " " + text
        if not has_prime(text, prime):
            raise ValueError(f"rewrite prompt {text!r} does not start with the prime {prime!r}")
        return text[len(prime) :]


def template_for_adapter(template: RecoveryTemplate, trained: str | None, adapter: str) -> RecoveryTemplate:
    """The template ``adapter`` is served with: the kind it was trained with (``trained``, from its metadata;
    None for adapters recoverlib did not train). Asking for the other kind explicitly is a one-line error."""
    if trained is None:
        return template
    if template.kind not in ("auto", trained):
        raise RecoverlibError(f"adapter {adapter!r} was trained with the {trained} recovery prompt, not"
                              f" {template.kind}: use --template {trained} or auto")
    return replace(template, kind=trained)


def has_prime(rewrite_prompt: str, prime: str) -> bool:
    """Whether ``rewrite_prompt`` opens with ``prime`` as whole words ("Rewrite" opens "Rewrite it", not
    "Rewritten")."""
    text = rewrite_prompt.strip()
    if not prime or not text.startswith(prime):
        return not prime
    rest = text[len(prime) :]
    return not rest or not (rest[0].isalnum() and prime[-1].isalnum())


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _n_tokens(tokenizer, text: str) -> int:
    return len(_encode(tokenizer, text))


def _split_budget(lengths: list[int], budget: int) -> list[int]:
    """Token counts to keep per text: short texts keep all, the rest share what is left evenly."""
    keep = [0] * len(lengths)
    remaining, order = budget, sorted(range(len(lengths)), key=lambda i: lengths[i])
    for pos, i in enumerate(order):
        share = remaining // (len(lengths) - pos)
        keep[i] = min(lengths[i], share)
        remaining -= keep[i]
    return keep


def clean_prediction(
    text: str, template: RecoveryTemplate | None = None, stop: tuple[str, ...] = (), prime: str = ""
) -> str:
    """Turn one raw generation into a prompt: strip the response prefix, cut at end of text, unquote.

    ``stop`` holds strings that end the text (e.g. the tokenizer's eos token). A blank line also ends it:
    a rewrite prompt is one paragraph. ``prime``: the opening the prompt was rendered with (engines return the
    continuation only); it is put back in front, so a primed prediction starts with its opening.
    Returns ``""`` when nothing usable is left.
    """
    template = template or RecoveryTemplate()
    out = prime + text if prime else text
    for marker in (*stop, "\n\n"):
        if marker and marker in out:
            out = out.split(marker, 1)[0]
    out = out.strip()
    if out.startswith(template.response_prefix):
        out = out[len(template.response_prefix) :].strip()
    while len(out) >= 2 and out[0] in _QUOTES and out[-1] in _QUOTES:
        out = out[1:-1].strip()
    out = out.strip(_QUOTES + " ")
    # byte-level models can emit control bytes
    out = "".join(c for c in out if c.isprintable() or c.isspace())
    return re.sub(r"\s+", " ", out).strip()
