"""The whole data path for a CSV: rows -> recovery prompts -> engine samples -> one prompt per row -> submission.

Rows are served in chunks; after each chunk its cleaned samples are appended to the samples file (JSONL, one
line per row, input order), so a run that stops keeps every finished row and ``resume`` continues from there.
Chunks sit at fixed input positions (rows ``k * chunk_rows`` on) and each row is seeded by its input position, so
a run killed at any moment and resumed with the same options writes the same bytes as one that never stopped: a
chunk cut short is sampled again whole (the same batches, the same seeds) and only its missing rows are appended.
A row that cannot be served (empty text) or whose samples are all empty gets the fallback prompt and a warning.
A chunk whose generation fails is served again row by row: a row that fails alone costs that row only (fallback,
warning, left out of the samples file so ``resume`` tries it again); when every row fails alone the error is not
about rows, and the run stops with it, every finished chunk kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from recoverlib.combine import CombineContext, ConcatConfig, Sample, combine_rows
from recoverlib.combine.base import needs_embeddings
from recoverlib.engines.base import Engine, SamplingConfig
from recoverlib.errors import RecoverlibError
from recoverlib.io import Row, append_samples, read_rows, resume_samples, write_submission
from recoverlib.prompt import RecoveryTemplate, clean_prediction, template_for_adapter

log = logging.getLogger("recoverlib")

# A public mean prompt worth about 0.63 on the competition's test set on its own (a public Kaggle notebook).
DEFAULT_FALLBACK = (
    "Please improve this text using the writing style with maintaining the original meaning but altering the tone."
)


@dataclass(frozen=True)
class PredictConfig:
    """What to sample and how to combine it. Defaults follow the seed (4 samples, temperature 0.7, top_p 0.95)."""

    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(samples=4))
    include_base: bool = False  # also sample the base model (it is always sampled when there are no adapters)
    fallback_prompt: str = DEFAULT_FALLBACK
    chunk_rows: int | None = None  # rows per generate call (None: the engine's choice, Engine.chunk_rows)
    combination: object = field(default_factory=ConcatConfig)
    template: RecoveryTemplate = field(default_factory=RecoveryTemplate)

    def __post_init__(self):
        if not self.fallback_prompt.strip():
            raise RecoverlibError("the fallback prompt must not be empty")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise RecoverlibError(f"chunk_rows must be >= 1 (got {self.chunk_rows})")


@dataclass(frozen=True)
class Prediction:
    """One row's result: the combined prompt, the samples it came from, and why a fallback was used (if so)."""

    id: str
    prompt: str
    samples: tuple[Sample, ...]
    fallback: str | None = None


@dataclass(frozen=True)
class BaseModel:
    """One base model of a run and the adapters it serves. ``name`` labels its samples; a run with several bases
    needs distinct names (the 1st place combined Mistral and Gemma adapters; each base is served in turn)."""

    path: Path
    adapters: Mapping[str, str | Path] = field(default_factory=dict)
    name: str | None = None


def predict_rows(engine: Engine, rows: Sequence[Row], config: PredictConfig | None = None, *,
                 samples_file: str | Path | None = None, resume: bool = False,
                 context: CombineContext | None = None) -> list[Prediction]:
    """Predict every row with ``engine``; returns one :class:`Prediction` per row, in input order.

    ``context``: embedder and caches for combination strategies that embed (default: the competition's
    embedder, loaded only if the strategy needs it).
    """
    config = config or PredictConfig()
    samples = sample_rows(engine, rows, config, samples_file=samples_file, resume=resume, fresh=True)
    return finish_rows(rows, samples, config, context)


def start_samples_file(samples_file: str | Path | None, rows: Sequence[Row], resume: bool,
                       base: str | None = None) -> dict:
    """The rows ``base`` already sampled (``resume``), or a new empty samples file; never replaces finished samples."""
    if not samples_file:
        return {}
    if resume:
        return resume_samples(samples_file, [r.id for r in rows], base)
    path = Path(samples_file)
    if path.is_file() and path.stat().st_size:
        raise RecoverlibError(f"samples file {path} already holds samples: pass --resume to continue it,"
                              " or name a new file (nothing was changed)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return {}


def sample_rows(engine: Engine, rows: Sequence[Row], config: PredictConfig, *, samples_file: str | Path | None = None,
                resume: bool = False, base: str | None = None, fresh: bool = True) -> dict[str, tuple[Sample, ...]]:
    """Cleaned samples of every row by ``engine`` (labelled ``base``), in chunks at fixed input positions; each
    chunk is appended to ``samples_file`` as it finishes. With ``resume`` the rows already there for this base are
    skipped; ``fresh`` (no resume) starts the file, refusing one that already holds samples."""
    templates = serving_templates(engine, config)  # before the samples file is touched: a mismatch is one line
    done = start_samples_file(samples_file, rows, resume, base) if (resume or fresh) else {}
    step = config.chunk_rows or engine.chunk_rows
    todo = sum(r.id not in done for r in rows)
    label = "rows" if base is None else f"rows ({base})"
    with tqdm(total=todo, desc=label, unit="row", disable=not todo) as bar:  # closed (a newline) on errors too
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            missing = [row for row in chunk if row.id not in done]
            if not missing:
                continue
            got = _sample_chunk_isolated(engine, chunk, config, templates, first_key=start, base=base)
            missing = [row for row in missing if row.id in got]  # a row that failed alone is not recorded
            if samples_file:
                append_samples(samples_file, [(row.id, got[row.id]) for row in missing], base)
            done.update((row.id, got[row.id]) for row in missing)
            bar.update(len(missing))
    return done


def serving_adapters(engine: Engine, config: PredictConfig) -> list[str | None]:
    """The adapters every row is sampled from (``None``: the base), in a fixed order."""
    adapters: list[str | None] = sorted(engine.adapters)
    return [None, *adapters] if (config.include_base or not adapters) else adapters


def serving_templates(engine: Engine, config: PredictConfig) -> dict[str | None, RecoveryTemplate]:
    """The recovery template of each served adapter (``None``: the base): the kind an adapter was trained with,
    else ``config.template``, settled for the engine's tokenizer once per run."""
    what = f"the tokenizer of {getattr(engine, 'model_path', 'the model')}"
    base = config.template.for_tokenizer(engine.tokenizer, what)
    out = {}
    for a in serving_adapters(engine, config):
        trained = engine.adapters[a].template if a else None
        out[a] = template_for_adapter(config.template, trained, a).for_tokenizer(engine.tokenizer, what) if trained else base
    return out


def finish_rows(rows: Sequence[Row], samples: Mapping[str, Sequence[Sample]], config: PredictConfig,
                context: CombineContext | None = None) -> list[Prediction]:
    """One :class:`Prediction` per row from its samples (all bases'), combined across all rows at once so
    embedding strategies batch their model calls; rows that cannot be served get the fallback."""
    served = {row.id: tuple(samples.get(row.id, ())) for row in rows if not row.problem}
    prompts = combine_rows(served, config.combination, context or CombineContext())
    return [_finish(row, samples.get(row.id, ()), prompts.get(row.id, ""), config) for row in rows]


def _sample_chunk_isolated(engine: Engine, chunk: Sequence[Row], config: PredictConfig, templates: Mapping,
                           first_key: int, base: str | None) -> dict[str, tuple[Sample, ...]]:
    """:func:`_sample_chunk`, and when it fails, each servable row alone (seeded by its own position): the rows
    that fail alone are left out of the result with a warning; if all of them fail (two or more), the error is
    the engine's, not a row's, and is raised."""
    try:
        return _sample_chunk(engine, chunk, config, templates, first_key=first_key, base=base)
    except RecoverlibError:
        raise  # a setting the user must change, never one row's fault
    except Exception as err:  # noqa: BLE001 (any engine failure: find the row, keep the others)
        servable = [i for i, row in enumerate(chunk) if not row.problem]
        if len(servable) < 2:
            return _failed_rows(chunk, {i: err for i in servable})
        log.warning("rows %d-%d: generation failed (%s: %s); serving them one by one to find the row",
                    first_key, first_key + len(chunk) - 1, type(err).__name__, err)
        first_error = err
    out: dict[str, tuple[Sample, ...]] = {row.id: () for row in chunk if row.problem}
    errors: dict[int, Exception] = {}
    for i in servable:
        try:
            out.update(_sample_chunk(engine, chunk[i : i + 1], config, templates, first_key=first_key + i, base=base))
        except Exception as err:  # noqa: BLE001
            errors[i] = err
    if len(errors) == len(servable):
        raise first_error
    return {**out, **_failed_rows(chunk, errors)}


def _failed_rows(chunk: Sequence[Row], errors: Mapping[int, Exception]) -> dict:
    """Warn once per row that failed alone; the result holds the chunk's unservable rows (none failed)."""
    for i, err in errors.items():
        log.warning("row id=%s: generation failed (%s: %s); it gets the fallback prompt and is not saved, so"
                    " --resume tries it again", chunk[i].id, type(err).__name__, err)
    return {row.id: () for row in chunk if row.problem}


def _sample_chunk(engine: Engine, chunk: Sequence[Row], config: PredictConfig, templates: Mapping,
                  first_key: int = 0, base: str | None = None) -> dict[str, tuple[Sample, ...]]:
    """Cleaned samples of every servable row of ``chunk`` (rows with a problem get none), labelled ``base``.

    ``first_key``: the input position of ``chunk[0]``; each row is seeded by its input position.
    """
    out: dict[str, tuple[Sample, ...]] = {r.id: () for r in chunk}
    keys = [first_key + i for i, r in enumerate(chunk) if not r.problem]
    rows = [r for r in chunk if not r.problem]
    if not rows:
        return out
    adapters = list(templates)
    primes = {a: (engine.adapters[a].prime if a else "") for a in adapters}
    prompts = {a: render_prompts(engine, rows, config, primes[a], templates[a]) for a in adapters}
    raw = engine.generate(prompts, config.sampling, adapters, keys=keys)
    stop = tuple(t for t in (engine.tokenizer.eos_token,) if t)
    for i, row in enumerate(rows):
        out[row.id] = tuple(
            Sample(a, k, clean_prediction(text, templates[a], stop, prime=primes[a]), base)
            for a in adapters
            for k, text in enumerate(raw[a][i])
        )
    return out


MIN_PROMPT_TOKENS = 16  # below this not even the template fits: every row would be cut to nothing


def prompt_budget(max_model_len: int, max_new_tokens: int) -> int:
    """Context tokens left for the prompt next to ``max_new_tokens``; too few is a one-line error."""
    budget = max_model_len - max_new_tokens
    if budget < MIN_PROMPT_TOKENS:
        raise RecoverlibError(f"max_new_tokens {max_new_tokens} leaves {budget} of {max_model_len} context tokens "
                              f"for the prompt (at least {MIN_PROMPT_TOKENS}); lower it or raise --max-model-len")
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


def _finish(row: Row, samples: Sequence[Sample], prompt: str, config: PredictConfig) -> Prediction:
    if row.problem:
        return Prediction(row.id, config.fallback_prompt, (), fallback=row.problem)
    prompt = prompt.strip()
    if not samples:  # its generation failed (warned then)
        return Prediction(row.id, config.fallback_prompt, (), fallback="generation failed")
    if not prompt:
        log.warning("row id=%s: every sample was empty after cleaning; it gets the fallback prompt", row.id)
        return Prediction(row.id, config.fallback_prompt, tuple(samples), fallback="empty samples")
    return Prediction(row.id, prompt, tuple(samples))


def check_predict_paths(input_csv: str | Path, out: str | Path, samples_file: str | Path | None) -> None:
    """Refuse a submission or samples file that would overwrite the input CSV (or each other)."""
    from recoverlib.output_paths import check_output_file

    check_output_file(out, [("the input", input_csv), ("the samples file", samples_file)])
    if samples_file is not None:
        check_output_file(samples_file, [("the input", input_csv)])


def predict(model: str | Path | Sequence[BaseModel], input_csv: str | Path, out: str | Path, *,
            adapters: Mapping[str, str | Path] | None = None, engine: str = "auto",
            config: PredictConfig | None = None, engine_config=None,
            samples_file: str | Path | None = None, resume: bool = False,
            context: CombineContext | None = None, close_engine: bool = True) -> list[Prediction]:
    """One call for a whole Kaggle CSV: read rows, build the engine, predict, write the submission.

    ``model``: a model folder (with ``adapters``), or several :class:`BaseModel` (each with its adapters), served
    one after another by ``engine`` (one engine in memory at a time); every row's samples of all bases are
    combined together, and the samples file records each sample's base (``resume`` continues across bases).
    ``close_engine=False`` leaves the last engine to the end of the process: for a caller about to exit (the CLI),
    since vLLM's shutdown spends about 1.3 s in garbage collection on the 2-core CPU.
    """
    from dataclasses import replace

    from recoverlib.engines import EngineConfig, make_engine
    from recoverlib.engines.registry import check_engine_name

    config = config or PredictConfig()
    check_engine_name(engine)  # an unknown name fails here, before anything is read or loaded
    engine_config = engine_config or EngineConfig()
    if engine_config.max_model_len is not None:
        prompt_budget(engine_config.max_model_len, config.sampling.max_new_tokens)
    bases = _bases(model, adapters)
    check_predict_paths(input_csv, out, samples_file)
    rows = read_rows(input_csv)
    if needs_embeddings(config.combination):  # an embedder that cannot load fails now, not after sampling
        context = context or CombineContext()
        context.get_scorer().model  # noqa: B018 (loads it)
    samples: dict[str, tuple[Sample, ...]] = {}
    servable = sum(r.problem is None for r in rows)
    for k, base in enumerate(bases):
        per_adapter = config.sampling.samples * config.sampling.max_new_tokens * servable
        eng_config = replace(engine_config, expected_new_tokens=per_adapter * (len(base.adapters) + config.include_base))
        eng = make_engine(engine, base.path, base.adapters, eng_config)
        try:
            got = sample_rows(eng, rows, config, samples_file=samples_file, resume=resume, base=base.name,
                              fresh=k == 0)
        finally:
            if close_engine or k < len(bases) - 1:  # one engine in memory at a time
                eng.close()
        samples = {r.id: samples.get(r.id, ()) + tuple(got.get(r.id, ())) for r in rows}
    predictions = finish_rows(rows, samples, config, context)
    write_submission(out, [p.id for p in predictions], [p.prompt for p in predictions])
    return predictions


def _bases(model, adapters) -> list[BaseModel]:
    """The run's bases: one unnamed base from a folder, or several named ones (checked: distinct names)."""
    if isinstance(model, (str, Path)):
        return [BaseModel(Path(model), dict(adapters or {}))]
    bases = list(model)
    if adapters:
        raise RecoverlibError("with several base models, give each its adapters (BaseModel.adapters), not adapters=")
    names = [b.name for b in bases]
    if not bases or (len(bases) > 1 and (None in names or len(set(names)) != len(names))):
        raise RecoverlibError(f"several base models need distinct names (got {names})")
    return bases
