"""Engine options on the command line: a preset's settings, explicit options on top, refusals in one line."""

from __future__ import annotations

from recoverlib.cli import build_parser, main
from recoverlib.cli.predict import engine_config
from recoverlib.engines import EngineConfig

BASE = ["predict", "--model", "m", "--input", "i.csv", "--out", "o.csv"]


def config_of(*options: str) -> EngineConfig:
    return engine_config(build_parser().parse_args([*BASE, *options]))


def test_defaults_are_engine_config_defaults():
    assert config_of() == EngineConfig()


def test_every_gpu_option_reaches_the_config():
    config = config_of(
        "--tensor-parallel-size",
        "2",
        "--gpu-memory-utilization",
        "0.8",
        "--dtype",
        "float16",
        "--max-loras",
        "2",
        "--max-num-seqs",
        "32",
        "--enforce-eager",
        "--no-custom-all-reduce",
    )
    assert (config.tensor_parallel_size, config.gpu_memory_utilization, config.dtype) == (2, 0.8, "float16")
    assert (config.max_loras, config.max_num_seqs, config.enforce_eager, config.custom_all_reduce) == (
        2,
        32,
        True,
        False,
    )


def test_preset_with_explicit_override():
    config = config_of("--preset", "kaggle-t4x2", "--custom-all-reduce", "--max-model-len", "1024")
    assert config.tensor_parallel_size == 2 and config.dtype == "float16"
    assert config.custom_all_reduce and config.max_model_len == 1024


def test_gpu_setting_on_cpu_is_one_line_before_any_engine(capsys, tiny_model, sample_csv, tmp_path):
    code = main(
        [
            "predict",
            "--model",
            str(tiny_model),
            "--input",
            str(sample_csv),
            "--out",
            str(tmp_path / "o.csv"),
            "--gpu-memory-utilization",
            "0.5",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("recoverlib: error: --gpu-memory-utilization applies to GPUs")


def test_hf_engine_refuses_tensor_parallel(capsys, tiny_model, sample_csv, tmp_path):
    code = main(
        [
            "predict",
            "--model",
            str(tiny_model),
            "--input",
            str(sample_csv),
            "--out",
            str(tmp_path / "o.csv"),
            "--engine",
            "hf",
            "--tensor-parallel-size",
            "2",
        ]
    )
    assert code == 2 and "tensor parallel is vLLM's" in capsys.readouterr().err
