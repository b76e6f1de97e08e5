"""One chunk of rows through one engine: what a worker of any executor runs.

Recovery prompts are rendered with each adapter's template (the kind it was trained with, else the run's,
settled once for the engine's tokenizer) and prime, fitted to the engine's context, generated, and cleaned. A
row that cannot be served (empty text) gets no samples. A chunk whose generation fails is served again row by
row: a row that fails alone is left out of the result (it gets the fallback, a warning names it, and
``--resume`` tries it again); when every row fails alone, the error is the engine's, not a row's, and is
raised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from recoverlib.combine import Sample
from recoverlib.engines.base import Engine
from recoverlib.errors import RecoverlibError
from recoverlib.io import Row
from recoverlib.pipeline.chunks import Chunk
from recoverlib.pipeline.config import PredictConfig
from recoverlib.prompt import RecoveryTemplate, clean_prediction, template_for_adapter

log = logging.getLogger("recoverlib")

Samples = dict[str, tuple[Sample, ...]]  # row id -> its cleaned samples
MIN_PROMPT_TOKENS = 16  # below this not even the template fits: every row would be cut to nothing


def serving_adapters(engine: Engine, config: PredictConfig) -> list[str | None]:
    """The adapters every row is sampled from (``None``: the base), in a fixed order."""
    adapters: list[str | None] = sorted(engine.adapters)
    return [None, *adapters] if (config.include_base or not adapters) else adapters


def serving_templates(engine: Engine, config: PredictConfig) -> dict[str | None, RecoveryTemplate]:
    """The recovery template of each served adapter (``None``: the base): the kind an adapter was trained
    with, else ``config.template``, settled for the engine's tokenizer (a plain prompt is said once, here)."""
    what = f"the tokenizer of {getattr(engine, 'model_path', 'the model')}"
    base = config.template.for_tokenizer(engine.tokenizer, what)
    out = {}
    for a in serving_adapters(engine, config):
        trained = engine.adapters[a].template if a else None
        out[a] = (
            template_for_adapter(config.template, trained, a).for_tokenizer(engine.tokenizer, what)
            if trained
            else base
        )
    return out


class ChunkSampler:
    """Serves chunks with ``engine`` (labelled ``base`` in the samples): ``sampler(chunk)`` -> samples per
    row id (rows that cannot be served: empty; rows that failed alone: absent)."""

    def __init__(self, engine: Engine, config: PredictConfig, base: str | None = None):
        self.engine, self.config, self.base = engine, config, base
        self.templates = serving_templates(engine, config)  # before any row: a template mismatch is one line
        self.primes = {a: (engine.adapters[a].prime if a else "") for a in self.templates}

    def __call__(self, chunk: Chunk) -> Samples:
        try:
            return self._serve(chunk.rows, chunk.start)
        except RecoverlibError:
            raise  # a setting the user must change, never one row's fault
        except Exception as err:  # noqa: BLE001 (any engine failure: find the row, keep the others)
            servable = [i for i, row in enumerate(chunk.rows) if not row.problem]
            if len(servable) < 2:
                return _failed(chunk.rows, {i: err for i in servable})
            log.warning("rows %d-%d: generation failed (%s: %s); serving them one by one to find the row",
                        chunk.start, chunk.start + len(chunk.rows) - 1, type(err).__name__, err)
            first_error = err
        out: Samples = {row.id: () for row in chunk.rows if row.problem}
        errors: dict[int, Exception] = {}
        for i in servable:
            try:
                out.update(self._serve(chunk.rows[i : i + 1], chunk.start + i))
            except Exception as err:  # noqa: BLE001
                errors[i] = err
        if len(errors) == len(servable):
            raise first_error
        return {**out, **_failed(chunk.rows, errors)}

    def _serve(self, chunk: Sequence[Row], first_key: int) -> Samples:
        """Cleaned samples of every servable row (rows with a problem get none); row i is seeded by
        ``first_key + i``."""
        out: Samples = {r.id: () for r in chunk}
        keys = [first_key + i for i, r in enumerate(chunk) if not r.problem]
        rows = [r for r in chunk if not r.problem]
        if not rows:
            return out
        adapters = list(self.templates)
        prompts = {
            a: render_prompts(self.engine, rows, self.config, self.primes[a], self.templates[a])
            for a in adapters
        }
        raw = self.engine.generate(prompts, self.config.sampling, adapters, keys=keys)
        stop = tuple(t for t in (getattr(self.engine.tokenizer, "eos_token", None),) if t)
        for i, row in enumerate(rows):
            out[row.id] = tuple(
                Sample(a, k, clean_prediction(text, self.templates[a], stop, prime=self.primes[a]), self.base)
                for a in adapters
                for k, text in enumerate(raw[a][i])
            )
        return out


def _failed(chunk: Sequence[Row], errors) -> Samples:
    """Warn once per row that failed alone; the result holds the chunk's unservable rows (none failed)."""
    for i, err in errors.items():
        log.warning("row id=%s: generation failed (%s: %s); it gets the fallback prompt and is not saved, so"
                    " --resume tries it again", chunk[i].id, type(err).__name__, err)
    return {row.id: () for row in chunk if row.problem}


def prompt_budget(max_model_len: int, max_new_tokens: int) -> int:
    """Context tokens left for the prompt next to ``max_new_tokens``; too few is a one-line error."""
    budget = max_model_len - max_new_tokens
    if budget < MIN_PROMPT_TOKENS:
        raise RecoverlibError(
            f"max_new_tokens {max_new_tokens} leaves {budget} of {max_model_len} context tokens "
            f"for the prompt (at least {MIN_PROMPT_TOKENS}); lower it or raise --max-model-len"
        )
    return budget


def render_prompts(engine: Engine, rows: Sequence[Row], config: PredictConfig, prime: str = "",
                   template: RecoveryTemplate | None = None) -> list[str]:
    """Recovery prompts (``template``, default ``config.template``) that fit the engine's context next to
    ``max_new_tokens``; truncation is warned per row."""
    budget = prompt_budget(engine.max_model_len, config.sampling.max_new_tokens)
    tpl, tok = template or config.template, engine.tokenizer
    prompts = [tpl.render(tok, row.original_text, row.rewritten_text, prime) for row in rows]
    # One batch tokenization to find the prompts that are too long; only those are fitted one by one.
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    for i, row in enumerate(rows):
        if lengths[i] > budget:
            prompts[i], cut = tpl.render_fitted(tok, row.original_text, row.rewritten_text, budget, prime)
            if cut:
                log.warning("row id=%s: texts truncated to fit %d prompt tokens", row.id, budget)
    return prompts
