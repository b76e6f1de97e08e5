"""One embedding context for every combination test (the MiniLM scorer loads once per session)."""

import pytest

from recoverlib.combine import CombineContext, Sample


@pytest.fixture(scope="session")
def ctx(scorer):
    return CombineContext(scorer=scorer)


def rows_of(*texts, adapters=("a", "b")):
    """Samples round-robin over ``adapters``: texts[0] is a/0, texts[1] is b/0, texts[2] is a/1, ..."""
    n = len(adapters)
    return [Sample(adapters[i % n], i // n, t) for i, t in enumerate(texts)]


PIRATE = "Rewrite this text as a pirate would say it."
PIRATE2 = "Rewrite the text as if a pirate said it."
SHORT = "Make the text shorter and more formal."
POEM = "Turn this into a poem about cooking."


@pytest.fixture
def cli_scorer(monkeypatch, scorer):
    """CLI commands reuse the session's MiniLM scorer instead of loading their own (10 s a load)."""
    import importlib

    cli = importlib.import_module("recoverlib.cli.combine")
    own = cli._context  # makes the pairs of --rows; its Scorer loads nothing until used
    monkeypatch.setattr(cli, "_context",
                        lambda embedder, rows=None, engine="hf": CombineContext(
                            scorer=scorer, pairs=own(embedder, rows).pairs, head_engine=engine))
