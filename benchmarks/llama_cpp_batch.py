"""llama.cpp through llama-cpp-python's low-level API, for :mod:`benchmarks.llama_cpp`: a Hugging Face
checkpoint converted to GGUF (llama.cpp's own converter) and quantized, and a batched generation loop that
decodes n sequences per prompt sharing the prompt's KV cells (``llama_memory_seq_cp``), as llama.cpp's
``batched`` example does."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MISSING = ("llama_cpp is not importable: pip install llama-cpp-python (a source build;"
           " see benchmarks/llama_cpp.py's docstring), then put it on PYTHONPATH")
CONVERTER = "convert_hf_to_gguf.py"
# The tiny tokenizer is byte-level BPE with GPT-2's split regex; its hash is not in llama.cpp's list of
# known pre-tokenizers, so the converter is told which one it is.
PRE_TOKENIZER = "gpt-2"
FTYPES = {"q4_0": 2, "q4_k_m": 15}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* for the quantizer

_CONVERT = """
import sys
sys.path.insert(0, sys.argv[1])
import convert_hf_to_gguf
from conversion import base
pre = sys.argv[2]
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [convert_hf_to_gguf.__file__, *sys.argv[3:]]
convert_hf_to_gguf.main()
"""


def require_llama_cpp():
    """The ``llama_cpp`` module, or exit with one line saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit(MISSING) from None
    return llama_cpp


def converter_dir(src: Path | None) -> Path:
    """llama.cpp's source folder holding ``convert_hf_to_gguf.py`` (the sdist's ``vendor/llama.cpp``)."""
    if src is None or not (src / CONVERTER).is_file():
        raise SystemExit(
            f"no {CONVERTER} under {src}: unpack llama-cpp-python's source (pip download --no-deps"
            " --no-binary :all: llama-cpp-python==0.3.36; tar xzf ...) and pass"
            " --llama-cpp-src .../vendor/llama.cpp"
            " (or set LLAMA_CPP_SRC)"
        )
    return src


def convert(model: Path, out: Path, src: Path, log: Path) -> Path:
    """``model`` (a Hugging Face folder) as a bf16 GGUF at ``out`` (kept if already there)."""
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    cmd = [sys.executable, "-c", _CONVERT, str(converter_dir(src)), PRE_TOKENIZER, str(model), "--outtype",
           "bf16", "--outfile", str(tmp)]
    with open(log, "a") as err:
        done = subprocess.run(cmd, stdout=err, stderr=err)
    if done.returncode != 0:
        raise RuntimeError(f"llama.cpp's converter failed on {model} ({done.returncode}); see {log}")
    tmp.rename(out)
    return out


def quantize(bf16: Path, out: Path, kind: str, threads: int) -> Path:
    """``bf16`` quantized by llama.cpp's quantizer to ``kind`` (a key of :data:`FTYPES`), kept if there."""
    if out.is_file():
        return out
    lc = require_llama_cpp()
    keep = quiet(lc)  # noqa: F841 (C holds the callback while it lives)
    params = lc.llama_model_quantize_default_params()
    params.nthread, params.ftype = threads, FTYPES[kind]
    tmp = out.with_suffix(".tmp")
    if lc.llama_model_quantize(str(bf16).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {bf16} to {kind}")
    tmp.rename(out)
    return out


def quiet(lc):
    """Silence llama.cpp's log (per tensor and per load, on stderr); the callback must be kept alive."""
    callback = lc.llama_log_callback(lambda level, text, data: None)
    lc.llama_log_set(callback, ctypes.c_void_p())
    return callback


@dataclass(frozen=True)
class Phases:
    """One job's timing: prompts in (and each prompt's first n tokens sampled), then the decode steps."""

    prefill_s: float
    decode_s: float
    generated: int
    sample_s: float  # of the two, the seconds in llama.cpp's sampler (temperature, top-p, draw)


@dataclass(frozen=True)
class Sampling:
    """The job's sampling (vLLM's order: temperature, then top-p); eos is never checked (ignored)."""

    temperature: float = 0.7
    top_p: float = 0.95


class BatchedLlama:
    """A loaded GGUF; :meth:`generate` runs one job in a fresh context sized for it."""

    def __init__(self, gguf: Path, threads: int, repack: bool, n_batch: int = 2048, n_ubatch: int = 512):
        self.lc = lc = require_llama_cpp()
        lc.llama_backend_init()
        self._quiet = quiet(lc)  # kept: C holds the callback
        params = lc.llama_model_default_params()
        params.use_extra_bufts = repack  # weight repacking (on an AMX CPU its Q4_0 load segfaulted)
        self.model = lc.llama_model_load_from_file(str(gguf).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        self.threads, self.n_batch, self.n_ubatch = threads, n_batch, n_ubatch

    def _context(self, cells: int, sequences: int):
        lc = self.lc
        params = lc.llama_context_default_params()
        params.n_ctx = -(-cells // 256) * 256
        params.n_batch, params.n_ubatch = self.n_batch, self.n_ubatch
        params.n_seq_max = sequences
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = True  # the n sequences of a prompt read its cells (llama.cpp's batched example)
        params.no_perf = True
        ctx = lc.llama_init_from_model(self.model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not make a context of {cells} cells x {sequences} sequences")
        return ctx

    def _sampler(self, sampling: Sampling, seed: int):
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(sampling.temperature))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(sampling.top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    def generate(self, prompts: list[list[int]], n: int, tokens: int, sampling: Sampling,
                 seed: int) -> Phases:
        """``n`` sequences of exactly ``tokens`` new tokens for each prompt (token ids)."""
        lc = self.lc
        width = len(prompts) * n
        ctx = self._context(sum(map(len, prompts)) + width * tokens, width)
        batch = lc.llama_batch_init(max(self.n_batch, width), 0, 1)
        chain = self._sampler(sampling, seed)
        try:
            start = time.perf_counter()
            current, sampling_s = self._prefill(ctx, batch, chain, prompts, n)
            mid = time.perf_counter()
            lengths = [len(p) for p in prompts for _ in range(n)]
            sampling_s += self._decode(ctx, batch, chain, current, lengths, tokens)
            end = time.perf_counter()
        finally:
            lc.llama_sampler_free(chain)
            lc.llama_batch_free(batch)
            lc.llama_free(ctx)
        return Phases(mid - start, end - mid, width * tokens, sampling_s)

    def _run(self, ctx, batch, count: int) -> None:
        batch.n_tokens = count
        if (rc := self.lc.llama_decode(ctx, batch)) != 0:
            raise RuntimeError(f"llama_decode returned {rc} (context too small?)")

    def _prefill(self, ctx, batch, chain, prompts: list[list[int]], n: int) -> tuple[list[int], float]:
        """Prompts packed into batches of ``n_batch`` tokens, prompt p as sequence p*n; once a prompt is
        in, its cells are shared with sequences p*n+1 .. p*n+n-1 and its n first tokens sampled. Returns
        the first tokens and the seconds spent sampling them."""
        lc = self.lc
        memory = lc.llama_get_memory(ctx)
        first: list[int] = []
        pending: list[tuple[int, int]] = []  # (prompt, batch index of its last token)
        fill, sampling_s = 0, 0.0
        for p, ids in enumerate(prompts):
            for pos, tok in enumerate(ids):
                last = pos == len(ids) - 1
                self._put(batch, fill, tok, pos, p * n, last)
                if last:
                    pending.append((p, fill))
                fill += 1
                if fill == self.n_batch or (p == len(prompts) - 1 and last):
                    self._run(ctx, batch, fill)
                    for q, idx in pending:
                        for k in range(1, n):
                            lc.llama_memory_seq_cp(memory, q * n, q * n + k, -1, -1)
                        start = time.perf_counter()
                        first += [lc.llama_sampler_sample(chain, ctx, idx) for _ in range(n)]
                        sampling_s += time.perf_counter() - start
                    pending, fill = [], 0
        return first, sampling_s

    def _decode(self, ctx, batch, chain, current: list[int], lengths: list[int], tokens: int) -> float:
        """``tokens - 1`` steps, every sequence's last token in one batch (the first came with the
        prefill); the seconds spent sampling."""
        sampling_s = 0.0
        for step in range(tokens - 1):
            for s, tok in enumerate(current):
                self._put(batch, s, tok, lengths[s] + step, s, True)
            self._run(ctx, batch, len(current))
            start = time.perf_counter()
            current = [self.lc.llama_sampler_sample(chain, ctx, s) for s in range(len(current))]
            sampling_s += time.perf_counter() - start
        return sampling_s

    @staticmethod
    def _put(batch, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, logits

    def close(self) -> None:
        """Free the model (its mapped file and any repacked weights)."""
        self.lc.llama_model_free(self.model)


def default_src() -> Path | None:
    """``LLAMA_CPP_SRC`` (llama.cpp's source folder with its converter), if set."""
    return Path(os.environ["LLAMA_CPP_SRC"]) if os.environ.get("LLAMA_CPP_SRC") else None
