"""Extension points from outside the package: a distribution that declares an engine and a combination
strategy under recoverlib's entry point groups is found by name, with no edit to recoverlib, through the API
and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from recoverlib.errors import RecoverlibError
from recoverlib.registry import Registry

PLUGIN = textwrap.dedent('''
    """A third-party package: an engine that echoes the rewritten text's first word, and a shouting
    strategy."""
    from dataclasses import dataclass
    from typing import ClassVar

    from recoverlib.combine import Strategy
    from recoverlib.engines.base import Engine, EngineConfig, repeat_greedy


    class _Tokens:
        eos_token = None
        chat_template = None
        bos_token = ""

        def __call__(self, texts, add_special_tokens=False, **_):
            return {"input_ids": [t.split() for t in texts]}


    class EchoEngine(Engine):
        name = "echo"

        def __init__(self, model, adapters=None, config=None):
            self.config, self.adapters, self._tokens = config or EngineConfig(), {}, _Tokens()

        @property
        def tokenizer(self):
            return self._tokens

        @property
        def max_model_len(self):
            return 10_000

        def generate(self, prompts, sampling, adapters, keys=None):
            requests = self._requests(prompts, adapters)
            first = lambda p: p.split("Rewritten text:")[1].split()[0]  # noqa: E731
            return {a: [repeat_greedy([first(p)], sampling) for p in ps] for a, ps in requests.items()}

        def close(self):
            pass


    @dataclass(frozen=True)
    class ShoutConfig:
        strategy: ClassVar[str] = "shout"


    STRATEGY = Strategy(ShoutConfig, lambda config, samples, ctx, draft: samples[0].text.upper())
''')


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """``echo_plugin`` installed the way pip leaves a package: its module and a dist-info with entry
    points."""
    (tmp_path / "echo_plugin.py").write_text(PLUGIN)
    info = tmp_path / "echo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[recoverlib.engines]\necho = echo_plugin:EchoEngine\n\n"
                                           "[recoverlib.strategies]\nshout = echo_plugin:STRATEGY\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_an_engine_and_a_strategy_from_another_package(plugin_path, tiny_model, sample_csv, tmp_path):
    from recoverlib.combine import STRATEGIES, combine
    from recoverlib.engines.registry import ENGINES
    from recoverlib.io import Sample

    assert "echo" in ENGINES.names() and ENGINES.get("echo").__name__ == "EchoEngine"
    shout = STRATEGIES.get("shout")
    assert combine([Sample(None, 0, "make it loud")], shout.config_type()) == "MAKE IT LOUD"
    out = tmp_path / "sub.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "recoverlib.cli", "predict", "--engine", "echo", "--model",
                          str(tiny_model), "--input", str(sample_csv), "--out", str(out), "--samples", "1"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = pd.read_csv(sample_csv, dtype=str)
    sub = pd.read_csv(out, dtype=str)
    assert list(sub["rewrite_prompt"]) == [t.split()[0].strip("\"'") for t in rows["rewritten_text"]]


def test_lookup_is_lazy_and_a_bad_entry_is_one_line(tmp_path, monkeypatch):
    registry = Registry(
        "thing", "recoverlib.tests-nothing", {"ok": "json:dumps", "broken": "no_such_module:X"}
    )
    assert registry.names() == ["broken", "ok"]  # nothing imported to list them
    assert registry.get("ok")([1]) == "[1]"
    with pytest.raises(RecoverlibError, match="thing 'broken' \\(no_such_module:X\\) cannot be loaded"):
        registry.get("broken")
    with pytest.raises(RecoverlibError, match="unknown thing 'nope'; choose one of broken, ok"):
        registry.get("nope")
