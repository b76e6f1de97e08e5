"""Stand-ins for a model's samples in the head tests."""

from __future__ import annotations

from recoverlib.combine import Sample


def fake_samples(rows):
    """Per row: its truth, another row's prompt and the truth again (a stand-in for the model's samples)."""
    return {
        r.id: (
            Sample("a", 0, r.rewrite_prompt),
            Sample("a", 1, rows[(k + 7) % len(rows)].rewrite_prompt),
            Sample("b", 0, r.rewrite_prompt),
        )
        for k, r in enumerate(rows)
    }
