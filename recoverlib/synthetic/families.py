"""Transformation families: each is a deterministic rewrite of a text plus several wordings of its
instruction.

A family registers with :func:`family`; an *alias* family (:func:`alias`) shares its primary's rewrite but is
worded differently ("make it formal" / "make it professional"), so the rewrite alone cannot tell them apart.
Families with parameters (a persona, a replaced word) draw them per row and put them in both the rewrite and
the wording, so the model has to read them off the texts.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

Params = dict[str, str]


@dataclass(frozen=True)
class Family:
    """One kind of instruction: ``rewrite(text, params)`` and the wordings that ask for it."""

    name: str
    transform: str  # families with the same transform produce the same rewrite (an ambiguity group)
    wordings: tuple[str, ...]  # str.format templates over the params
    rewrite: Callable[[str, Params], str]
    draw: Callable[[random.Random, str], Params] | None = None  # params for one text

    @property
    def is_alias(self) -> bool:
        return self.name != self.transform

    def params(self, rng: random.Random, text: str) -> Params:
        return self.draw(rng, text) if self.draw else {}


FAMILIES: dict[str, Family] = {}


def family(*wordings: str, draw=None):
    """Register the decorated ``rewrite(text, params)`` as a primary family named after the function."""

    def wrap(fn):
        name = fn.__name__.strip("_")
        _register(Family(name, name, wordings, fn, draw))
        return fn

    return wrap


def alias(name: str, of: str, *wordings: str) -> None:
    """Register ``name``: the rewrite of family ``of`` under different wordings."""
    primary = FAMILIES[of]
    _register(Family(name, primary.transform, wordings, primary.rewrite, primary.draw))


def _register(fam: Family) -> None:
    if fam.name in FAMILIES:
        raise ValueError(f"family {fam.name!r} registered twice")
    if len(fam.wordings) < 3:
        raise ValueError(f"family {fam.name!r} needs at least 3 wordings")
    FAMILIES[fam.name] = fam


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]


def _words_map(text: str, table: dict[str, str]) -> str:
    return re.sub(r"\b\w+\b", lambda m: table.get(m.group(0), m.group(0)), text)


@family("Rewrite the text in all capital letters.", "Convert this text to uppercase.",
        "Make every letter of the text a capital letter.")
def upper(text: str, p: Params) -> str:
    return text.upper()


@family("Rewrite the text in lowercase letters only.", "Convert every letter to lowercase.",
        "Make this text all lowercase.")
def lower(text: str, p: Params) -> str:
    return text.lower()


@family("Reverse the order of the sentences.", "Rewrite the text with its sentences in reverse order.",
        "Put the last sentence first and the first sentence last.")
def reverse_sentences(text: str, p: Params) -> str:
    return " ".join(reversed(sentences(text)))


_PIRATE = {"the": "th'", "you": "ye", "my": "me", "is": "be", "are": "be", "was": "were", "yes": "aye",
           "friend": "matey", "friends": "mateys", "hello": "ahoy", "money": "doubloons", "to": "t'"}


@family("Rewrite this text as a pirate would say it.", "Make this text sound like a pirate.",
        "Translate the text into pirate speak.")
def pirate(text: str, p: Params) -> str:
    return f"Arr! {_words_map(text, _PIRATE)} Yo ho ho!"


@family("Turn the text into a question.", "Rewrite the text as a question.",
        "Make this text ask a question instead of stating facts.")
def question(text: str, p: Params) -> str:
    body = " ".join(s.rstrip(".!?") + "," for s in sentences(text)).rstrip(",")
    return f"Is it true that {_lower_first(body)}?"


PERSONAS = {
    "chef": "Now that is a recipe for success!", "teacher": "Any questions, class?",
    "detective": "The case is closed.", "scientist": "The evidence is clear.",
    "sports commentator": "What a play, folks!", "grandmother": "Now eat something, dear.",
    "robot": "Beep boop. End of report.", "poet": "And so the verses end.",
}


@family("Rewrite this text as if it were written by a {persona}.", "Make this sound like a {persona} is "
                                                                   "speaking.",
        "Rewrite the text in the voice of a {persona}.",
        draw=lambda rng, text: {"persona": rng.choice(sorted(PERSONAS))})
def persona(text: str, p: Params) -> str:
    return f"Speaking as a {p['persona']}: {text} {PERSONAS[p['persona']]}"


SUBSTITUTES = ("banana", "dragon", "umbrella", "wizard", "pancake", "volcano", "pillow", "rocket")


def _draw_replace(rng: random.Random, text: str) -> Params:
    words = sorted({w for w in re.findall(r"\b[a-z]{4,}\b", text)})
    return {"x": rng.choice(words) if words else "the", "y": rng.choice(SUBSTITUTES)}


@family("Replace the word '{x}' with '{y}'.", "Rewrite the text, changing every '{x}' to '{y}'.",
        "Swap the word {x} for {y} throughout the text.", draw=_draw_replace)
def replace(text: str, p: Params) -> str:
    return re.sub(rf"\b{re.escape(p['x'])}\b", p["y"], text)


@family("Summarize the text in one sentence.", "Shorten the text to a single sentence.",
        "Give a one-sentence summary of this text.")
def summary(text: str, p: Params) -> str:
    return sentences(text)[0]


@family("Turn the text into a bulleted list.", "Rewrite the text as bullet points.",
        "Format each sentence as a bullet point.")
def bullets(text: str, p: Params) -> str:
    return "\n".join(f"- {s}" for s in sentences(text))


@family("Number each sentence of the text.", "Rewrite the text as a numbered list.",
        "Turn the text into numbered steps.")
def numbered(text: str, p: Params) -> str:
    return "\n".join(f"{i}. {s}" for i, s in enumerate(sentences(text), 1))


@family("Convert this text into an email.", "Rewrite the text as an email to a colleague.",
        "Turn this into a short work email.")
def email(text: str, p: Params) -> str:
    return f"Subject: Update\nHi team,\n{text}\nBest regards"


@family("Rewrite this as a letter to a friend.", "Turn the text into a personal letter.",
        "Write this as a friendly letter.")
def letter(text: str, p: Params) -> str:
    return f"Dear friend,\n{text}\nWith love, your old pal"


@family("Capitalize the first letter of every word.", "Rewrite the text in title case.",
        "Make each word start with a capital letter.")
def title_case(text: str, p: Params) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in text.split())


@family("Rewrite the text as a poem.", "Turn this text into a short poem.", "Make this text into verse.")
def poem(text: str, p: Params) -> str:
    words = text.replace(".", "").split()
    lines = [" ".join(words[i : i + 5]) for i in range(0, len(words), 5)]
    return "\n".join(line[:1].upper() + line[1:] for line in lines)


@family("Make the text sound more excited.", "Rewrite the text with lots of enthusiasm.",
        "Add excitement to the text.")
def excited(text: str, p: Params) -> str:
    return "Wow! " + text.replace(".", "!")


_FORMAL = {
    "big": "substantial",
    "kids": "children",
    "got": "obtained",
    "but": "however",
    "fix": "repair",
    "fixed": "repaired",
    "cheap": "inexpensive",
    "wanted": "wished",
    "came": "arrived",
    "said": "stated",
}


@family("Make the text more formal.", "Rewrite this in a formal tone.", "Use formal language in this text.")
def formal(text: str, p: Params) -> str:
    return f"To whom it may concern: {_words_map(text, _FORMAL)} Kind regards."


@family("Make the text more casual.", "Rewrite this in a relaxed, informal tone.",
        "Make this sound like a chat between friends.")
def casual(text: str, p: Params) -> str:
    return f"Hey, so {_lower_first(text)} lol"


@family("Write a headline for this text.", "Rewrite the text as a breaking news headline.",
        "Turn the first sentence into a news headline.")
def headline(text: str, p: Params) -> str:
    return "BREAKING: " + title_case(sentences(text)[0].rstrip(".!?"), p)


@family("Rewrite the text as a fairy tale.", "Turn this into a children's story.",
        "Make this text sound like a bedtime story.")
def story(text: str, p: Params) -> str:
    return f"Once upon a time, {_lower_first(text)} And they all lived happily ever after."


@family("Rewrite the text as a dialogue between two people.", "Turn this into a conversation.",
        "Write the text as a script with two speakers.")
def dialogue(text: str, p: Params) -> str:
    return "\n".join(f"{'AB'[i % 2]}: {s}" for i, s in enumerate(sentences(text)))


@family("Spell every word backwards.", "Reverse the letters of each word.", "Write each word of the text in "
                                                                            "reverse.")
def reverse_words(text: str, p: Params) -> str:
    return re.sub(r"\w+", lambda m: m.group(0)[::-1], text)


@family("Remove all the vowels from the text.", "Delete every vowel.", "Rewrite the text without any vowels.")
def no_vowels(text: str, p: Params) -> str:
    return re.sub(r"[aeiouAEIOU]", "", text)


@family("Rewrite this as a tweet.", "Turn this text into a social media post.",
        "Make this a short post for Twitter.")
def tweet(text: str, p: Params) -> str:
    longest = max(re.findall(r"[A-Za-z]+", text), key=len)
    return f"{sentences(text)[0]} #{longest.capitalize()} #NoFilter"


QUOTED = ("Albert Einstein", "Taylor Swift", "Abraham Lincoln", "Marie Curie", "Yoda", "Shakespeare",
          "Oprah Winfrey", "Sherlock Holmes")


@family("Attribute this text as a quote from {name}.", "Rewrite the text as a quotation by {name}.",
        "Present this text as something {name} said.",
        draw=lambda rng, text: {"name": rng.choice(QUOTED)})
def quote(text: str, p: Params) -> str:
    return f'"{text}" - {p["name"]}'


@family("Add a concluding sentence to the text.", "End the text with a conclusion.",
        "Finish the text with a short conclusion.")
def conclusion(text: str, p: Params) -> str:
    return f"{text} In conclusion, this matters to everyone."


# Same rewrite, different request: the answer is uncertain by design (see TaskConfig.ambiguity).
alias("shout", "upper", "Make the text sound like someone is shouting.", "Rewrite this as if yelling it.",
      "Turn this into an angry shout.")
alias("whisper", "lower", "Rewrite this as a quiet whisper.", "Make the text sound softly spoken.",
      "Turn the text into a gentle murmur.")
alias(
    "backwards",
    "reverse_sentences",
    "Tell this story backwards.",
    "Rewrite the text starting from the end.",
    "Tell the events of the text in reverse.",
)
alias("tldr", "summary", "Write a TL;DR of this text.", "Cut this text down to its main point.",
      "Make the text much shorter.")
alias("checklist", "bullets", "Turn this into a to-do checklist.", "Rewrite the text as a checklist.",
      "Make a list of the points in this text.")
alias("memo", "email", "Write this up as an office memo.", "Rewrite the text as a memo for the team.",
      "Turn this into a workplace announcement.")
alias(
    "song",
    "poem",
    "Turn this into song lyrics.",
    "Rewrite the text as a song.",
    "Make the text into a ballad.",
)
alias("cheerful", "excited", "Make the text cheerful and upbeat.", "Rewrite this in a happy, positive way.",
      "Give the text a joyful tone.")
alias(
    "professional",
    "formal",
    "Make this sound more professional.",
    "Rewrite the text for a business audience.",
    "Give the text a professional tone.",
)
alias("friendly", "casual", "Make the text friendlier.", "Rewrite this in a warm, friendly way.",
      "Make the text sound approachable.")
alias("news", "headline", "Rewrite this as a news report.", "Turn the text into a newspaper headline.",
      "Make this sound like a news bulletin.")
alias("fable", "story", "Rewrite the text as a fable.", "Turn this into a folk tale.",
      "Tell this text as an old legend.")


def transforms() -> dict[str, list[Family]]:
    """Ambiguity groups: transform name -> its families, the primary first."""
    groups: dict[str, list[Family]] = {}
    for fam in FAMILIES.values():
        groups.setdefault(fam.transform, []).append(fam)
    return groups
