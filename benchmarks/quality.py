"""What the quantization ablation measures on a model, beside its bytes: quality against a reference on a
fixed text set, generation speed through an engine, and the metric through recoverlib's predict path.

The text set is recoverlib's own English, never random ids: the example rows (original and rewritten texts and
their rewrite prompts) and the built-in corpus, tokenized, joined with eos and cut into equal windows, so
every model sees the same tokens without padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from benchmarks.report import Timing, time_repeats
from recoverlib.engines.base import SamplingConfig

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "data" / "sample.csv"
SAMPLE_TRUTH = ROOT / "examples" / "data" / "sample_truth.csv"


def text_set() -> list[str]:
    """The fixed texts: example rows (both texts and the truth prompt) then the built-in corpus."""
    from recoverlib.io import read_rows, read_truth
    from recoverlib.tiny.corpus import corpus_texts

    truth = read_truth(SAMPLE_TRUTH)
    texts = []
    for row in read_rows(SAMPLE):
        texts += [row.original_text, row.rewritten_text, truth.get(row.id, "")]
    return [t for t in texts if t] + corpus_texts()


def token_stream(tokenizer) -> list[int]:
    """The text set as one token list, texts separated by eos."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in text_set():
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
    return ids


def text_windows(tokenizer, seq_len: int, count: int | None = None):
    """(windows x seq_len) LongTensor: consecutive non-overlapping windows of the stream (all, or the first
    ``count``)."""
    import torch

    stream = token_stream(tokenizer)
    n = len(stream) // seq_len if count is None else count
    while len(stream) < n * seq_len:  # a short stream (or many windows asked) wraps around
        stream = stream + stream
    return torch.tensor(stream[: n * seq_len]).reshape(n, seq_len)


def _batches(windows, batch: int):
    return [windows[i : i + batch] for i in range(0, len(windows), batch)]


def perplexity(model, windows, batch: int = 8) -> float:
    """exp(mean next-token negative log-likelihood) of ``model`` over every window."""
    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in _batches(windows, batch):
            logits = model(input_ids=ids).logits.float()[:, :-1]
            target = ids[:, 1:]
            nll += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
                )
            )
            count += target.numel()
    return float(torch.exp(torch.tensor(nll / count)))


def quality(ref, model, windows, batch: int = 8) -> dict:
    """KL(ref || model) per token, top-1 agreement, relative logits error, router top-2 agreement (per token,
    and the rate of identical expert pairs), and the model's perplexity; token-weighted over batches."""
    from recoverlib.quant.compare import logits_error, router_agreement

    sums = dict.fromkeys(("rel_error", "kl", "top1", "router_top2", "router_exact"), 0.0)
    for ids in _batches(windows, batch):
        err, route, weight = logits_error(ref, model, ids), router_agreement(ref, model, ids), ids.numel()
        for key, value in (*err.items(), ("router_top2", route["mean"]), ("router_exact", route["exact"])):
            sums[key] += value * weight
    total = windows.numel()
    return {**{k: v / total for k, v in sums.items()}, "ppl": perplexity(model, windows, batch),
            "tokens": total}


def prompts_of(tokenizer, n_tokens: int, count: int) -> list[str]:
    """``count`` prompts of about ``n_tokens`` tokens each, cut from the text set at different offsets."""
    stream = token_stream(tokenizer)
    while len(stream) < n_tokens * (count + 1):
        stream = stream + stream
    return [tokenizer.decode(stream[i * n_tokens : (i + 1) * n_tokens], skip_special_tokens=True)
            for i in range(count)]


def generation_speed(engine, prompts: Sequence[str], new_tokens: int, repeats: int, seed: int = 0) -> dict:
    """Prompt and generated tokens per second of one generate call over ``prompts`` (exactly ``new_tokens``
    each, eos ignored), after one warm-up call; median of ``repeats`` with min and max."""
    sampling = SamplingConfig(
        samples=1, temperature=0.7, max_new_tokens=new_tokens, seed=seed, ignore_eos=True
    )
    engine.generate(list(prompts), sampling, [None])  # warm-up (first kernel use, allocator)
    timing, _ = time_repeats(lambda: engine.generate(list(prompts), sampling, [None]), repeats)
    tok = engine.tokenizer
    prompt_tokens = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    return {"timing": timing, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens * len(prompts)}


def rate(tokens: int, timing: Timing, prefix: str) -> dict:
    """``tokens`` per second at the median, and at the slowest and fastest run."""
    return {f"{prefix}_tok_s": tokens / timing.median, f"{prefix}_tok_s_min": tokens / timing.max,
            f"{prefix}_tok_s_max": tokens / timing.min}


def validation_score(engine, rows, truths: dict[str, str], scorer, samples: int, new_tokens: int = 32,
                     seed: int = 0) -> float:
    """The metric (mean cos^3 with ``scorer``) of recoverlib's predictions for ``rows`` through ``engine``
    (every adapter sampled, samples concatenated: predict's defaults)."""
    from recoverlib.combine import CombineContext
    from recoverlib.pipeline import PredictConfig, predict_rows

    config = PredictConfig(SamplingConfig(samples=samples, max_new_tokens=new_tokens, seed=seed))
    predictions = predict_rows(engine, rows, config, context=CombineContext(scorer=scorer))
    return scorer.score([p.prompt for p in predictions], [truths[p.id] for p in predictions])
