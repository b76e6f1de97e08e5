"""Built-in English text: the tokenizer's training corpus, so the tiny model needs no download."""

from __future__ import annotations

_SENTENCES = """\
The meeting is moved to Thursday at ten. Please bring the budget figures and the draft of the new hiring plan.
Our cat refuses to eat the new food. She sniffs it, looks at me, and walks away.
The train was late again this morning, so I missed the first half of the lecture.
Rewrite this text as a poem. Make it shorter. Turn it into a question. Write it like a pirate would.
Make the text more formal and professional. Rewrite the text in a casual, friendly tone.
Convert this into an email to a colleague. Summarize the text in one sentence.
Please improve this text using the writing style with maintaining the original meaning but altering the tone.
Water boils at one hundred degrees Celsius at sea level, but at lower temperatures on mountains.
The garden was quiet. Rain fell on the roses and the old bench by the wall.
The software update fixes a bug that caused the app to crash when opening large files.
Mix flour, sugar and eggs. Bake for twenty minutes at one hundred eighty degrees.
The committee rejected the proposal because the costs were too high and the timeline unclear.
Scientists found a new species of frog in the rain forest near the river.
The children built a castle of sand on the beach and watched the waves take it away.
A strong wind knocked down the old oak tree in the park last night.
The museum opens a new exhibition about the history of flight next week.
He practised the piano every evening until the neighbours knew every song by heart.
Prices at the market rose sharply after the storm damaged the harvest.
She finished the marathon in under four hours and celebrated with her family.
The library will be closed on Monday for repairs to the heating system.
Hear ye, hear ye! Arr, matey! Dear Sir or Madam, I am writing to you about the following matter.
Once upon a time, in a land far away, there lived a king who loved riddles.
Breaking news: the city council has approved the plan for a new bridge across the river.
In conclusion, the results show that regular exercise improves sleep and mood.
"""


def corpus_texts() -> list[str]:
    """Lines of plain English (plus a few instruction styles) for tokenizer training."""
    return [line for line in _SENTENCES.splitlines() if line.strip()]
