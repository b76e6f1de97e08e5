"""recoverlib: recover the prompt an LLM rewrote a text with.

The flat API covers everything the command line does, under the same names::

    import recoverlib as rl
    rows = rl.read_rows("examples/data/sample.csv")
    with rl.make_engine("vllm", "out/tiny/model", {"a": "out/tiny/adapters/tiny-a"}) as engine:
        preds = rl.predict_rows(engine, rows, rl.PredictConfig(rl.SamplingConfig(samples=4)))

Names load on first use, so ``import recoverlib`` imports neither torch nor vLLM (nor any CLI module).
"""

from recoverlib.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    # data I/O and the recovery prompt
    "read_rows": "io",
    "read_truth": "io",
    "write_submission": "io",
    "read_samples": "io",
    "RecoveryTemplate": "prompt",
    "clean_prediction": "prompt",
    # adapters and engines
    "AdapterInfo": "adapters",
    "read_adapter": "adapters",
    "check_adapters": "adapters",
    "inspect_adapter": "engines.adapter_serving",
    "Engine": "engines",
    "EngineConfig": "engines",
    "SamplingConfig": "engines",
    "make_engine": "engines",
    "VLLMEngine": "engines.vllm",
    "HFEngine": "engines.hf",
    # the whole data path: predict
    "PredictConfig": "pipeline",
    "Prediction": "pipeline",
    "predict": "pipeline",
    "predict_rows": "pipeline",
    "DEFAULT_FALLBACK": "pipeline",
    "BaseModel": "pipeline",
    # metric and combination
    "Scorer": "metric",
    "CombineContext": "combine",
    "Sample": "combine",
    "combine_rows": "combine",
    "concat_predictions": "combine",
    "load_combination": "combine",
    "save_combination": "combine",
    "ConcatConfig": "combine",
    "FirstConfig": "combine",
    "MedoidConfig": "combine",
    "MeanPromptConfig": "combine",
    "SuffixConfig": "combine",
    "BudgetConfig": "combine",
    "MbrConfig": "combine",
    "PipelineConfig": "combine",
    "tune": "combine.tune",
    "optimize_prompt": "combine.search",
    "search_suffix": "combine.search",
    # quantization
    "PrecisionPlan": "quant.plan",
    "GroupPrecision": "quant.plan",
    "load_plan": "quant.plan",
    "PRESETS": "quant.plan",
    "quantize": "quant.api",
    "inspect_checkpoint": "quant.api",
    "load_quantized": "quant.api",
    "plan_bytes": "quant.planner",
    # training, the synthetic task, the tiny model
    "TrainConfig": "training.lora",
    "train_adapter": "training.lora",
    "TaskConfig": "synthetic",
    "write_task": "synthetic",
    "make_tiny": "tiny",
    "make_trained_tiny": "tiny",
    "RecoverlibError": "errors",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
