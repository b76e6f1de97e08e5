"""Original texts for the synthetic task: short English paragraphs on varied topics, from seeded templates.

A text is 1-3 sentences (about 6-50 words). Each sentence fills a pattern with one topic's words, so texts on
one topic read alike and topics differ in vocabulary (as real Kaggle originals do).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    people: tuple[str, ...]
    acts: tuple[tuple[str, str], ...]  # (past tense, base form) of a verb phrase
    things: tuple[str, ...]
    places: tuple[str, ...]
    reasons: tuple[str, ...]


def _t(people: str, acts: str, things: str, places: str, reasons: str) -> Topic:
    """A topic from ``;``-separated word lists; an act is ``past/base``."""
    pairs = tuple((a.split("/")[0], a.split("/")[1]) for a in acts.split(";"))
    return Topic(tuple(people.split(";")), pairs, tuple(things.split(";")), tuple(places.split(";")),
                 tuple(reasons.split(";")))


TOPICS: dict[str, Topic] = {
    "cooking": _t(
        "the chef;my grandmother;the young cook;our neighbour;the baker;a food critic",
        "cooked/cook;tasted/taste;baked/bake;burned/burn;served/serve;seasoned/season;chopped/chop",
        "the soup;a chocolate cake;the fresh bread;a spicy curry;the tomato sauce;the apple pie;the roast "
        "chicken",
        "in the kitchen;at the market;in the old restaurant;at the family dinner;on the stove",
        "the guests were hungry;the recipe was new;it was a holiday;the oven was finally fixed",
    ),
    "sports": _t(
        "the coach;the striker;our team;the young runner;the goalkeeper;the captain",
        "won/win;lost/lose;practised/practise;played/play;trained for/train "
        "for;missed/miss;celebrated/celebrate",
        "the final match;the penalty kick;the marathon;the championship;the morning session;the trophy",
        "at the stadium;on the muddy field;in the gym;at the city park;on the track",
        "the weather was terrible;the fans were loud;the season was almost over;everyone was tired",
    ),
    "technology": _t(
        "the engineer;the new app;our manager;the developer;the startup;the support team",
        "fixed/fix;released/release;tested/test;updated/update;broke/break;installed/install;designed/design",
        "the software update;a faster laptop;the login page;the database;the mobile phone;the new robot",
        "in the office;at the conference;in the data centre;on the server;in the lab",
        "customers complained;the deadline was close;the old version crashed;security was a concern",
    ),
    "nature": _t(
        "the old fox;a flock of birds;the farmer;the park ranger;a small rabbit;the hikers",
        "watched/watch;crossed/cross;found/find;followed/follow;planted/plant;climbed/climb;explored/explore",
        "the river;the tall pine trees;the mountain path;a field of flowers;the frozen lake;the hidden cave",
        "in the forest;near the waterfall;in the valley;on the hillside;by the sea",
        "spring had arrived;the storm was coming;the days were getting shorter;the snow had melted",
    ),
    "business": _t(
        "the director;our company;the sales team;the investor;the new manager;the accountant",
        "signed/sign;rejected/reject;approved/approve;discussed/discuss;presented/present;reviewed/review;delayed/delay",
        "the contract;the annual budget;the marketing plan;the quarterly report;the merger;the hiring plan",
        "at the board meeting;in the head office;during the video call;at the trade fair;in the conference "
        "room",
        "profits were falling;the costs were too high;the market was growing;the client asked for it",
    ),
    "school": _t(
        "the teacher;the students;my little brother;the principal;the new pupil;the librarian",
        "read/read;wrote/write;studied/study;forgot/forget;explained/explain;painted/paint;finished/finish",
        "the history essay;the maths homework;a long novel;the science project;the spelling test;the school "
        "play",
        "in the classroom;at the library;after lunch;in the playground;at the school hall",
        "the exam was next week;the bell rang early;the holidays were near;the class was curious",
    ),
    "travel": _t(
        "the tourists;my parents;the pilot;our guide;the backpacker;the travel writer",
        "visited/visit;booked/book;photographed/photograph;missed/miss;described/describe;reached/reach;toured/tour",
        "the ancient castle;a cheap flight;the night train;the famous bridge;the small hotel;the island",
        "in Paris;at the airport;on the coast;in the mountains;at the harbour",
        "the tickets were cheap;the weather was perfect;the trip was planned for years;the museum was closed",
    ),
    "health": _t(
        "the doctor;the nurse;my uncle;the patient;the fitness trainer;the scientist",
        "checked/check;recommended/recommend;tested/test;improved/improve;measured/measure;treated/treat;prepared/prepare",
        "the blood pressure;a healthy diet;the new medicine;the sleep schedule;the morning walk;the vaccine",
        "at the hospital;in the clinic;at home;in the waiting room;at the pharmacy",
        "the results were worrying;the winter was long;everyone wanted to feel better;"
        "the study was promising",
    ),
    "home": _t(
        "our cat;the children;my sister;the landlord;the old dog;the neighbours",
        "painted/paint;cleaned/clean;moved/move;broke/break;repaired/repair;decorated/decorate;ignored/ignore",
        "the kitchen table;the garden fence;the new sofa;the broken window;the blue curtains;the front door",
        "in the living room;in the garden;upstairs;in the garage;on the balcony",
        "guests were coming;it was raining all week;the house was too quiet;the rent went up",
    ),
    "music": _t(
        "the band;the singer;my cousin;the orchestra;the old pianist;the drummer",
        "played/play;recorded/record;wrote/write;rehearsed/rehearse;performed/perform;sang/sing;cancelled/cancel",
        "the new album;a sad song;the concert;the piano sonata;the summer festival;the opening number",
        "on the big stage;in the studio;at the town hall;in a small bar;on the radio",
        "the crowd was waiting;the tour was sold out;the lights had failed;it was their last show",
    ),
    "science": _t(
        "the researchers;the astronomer;the chemist;our professor;the team of biologists;the student",
        "discovered/discover;measured/measure;observed/observe;published/publish;repeated/repeat;analysed/analyse;questioned/question",
        "a new species of frog;the distant planet;the experiment;the strange signal;the ice samples;the data",
        "in the laboratory;at the observatory;in the rain forest;at the research station;"
        "under the microscope",
        "the funding was renewed;the first results were wrong;nobody had tried it before;the instruments "
        "were new",
    ),
    "city": _t(
        "the mayor;the city council;the bus driver;the shop owners;the police officer;the residents",
        "built/build;closed/close;opened/open;protested against/protest "
        "against;planned/plan;cleaned/clean;rebuilt/rebuild",
        "the new bridge;the main square;the old library;the bus station;the night market;the bike lanes",
        "downtown;near the river;in the old town;on Main Street;by the station",
        "traffic was terrible;the budget was approved;the old one was unsafe;people asked for it for years",
    ),
}

TIMES = ("yesterday", "last week", "this morning", "on Monday", "late at night", "every summer", "in March",
         "after the long winter", "before dawn", "on Friday evening")

PATTERNS = (
    "{Person} {past} {thing} {place}.",
    "{Time}, {person} {past} {thing}.",
    "{Person} {past} {thing} because {reason}.",
    "Nobody expected {person} to {base} {thing} {time}.",
    "{Person} said that {person2} {past} {thing} {place}.",
    "{Person} talked about {thing} {place} {time}.",
    "Because {reason}, {person} {past} {thing}.",
    "{Person} wanted to {base} {thing}, but {reason}.",
)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def sentence(rng: random.Random, topic: Topic) -> str:
    """One sentence on ``topic``, filled from ``rng``."""
    past, base = rng.choice(topic.acts)
    person, person2 = rng.sample(topic.people, 2)
    thing, place, reason, time = (rng.choice(topic.things), rng.choice(topic.places),
                                  rng.choice(topic.reasons), rng.choice(TIMES))
    slots = {"person": person, "person2": person2, "past": past, "base": base, "thing": thing,
             "place": place, "reason": reason, "time": time}
    slots.update({k[:1].upper() + k[1:]: _cap(v) for k, v in list(slots.items())})
    return rng.choice(PATTERNS).format(**slots)


def original_text(rng: random.Random, max_sentences: int = 3) -> str:
    """A paragraph of 1-``max_sentences`` sentences on one topic, no sentence repeated."""
    topic = TOPICS[rng.choice(sorted(TOPICS))]
    n = rng.randint(1, max_sentences)
    out: list[str] = []
    while len(out) < n:
        s = sentence(rng, topic)
        if s not in out:
            out.append(s)
    return " ".join(out)


def unique_texts(rng: random.Random, count: int) -> Iterator[str]:
    """``count`` distinct original texts, in a seeded order."""
    seen: set[str] = set()
    while len(seen) < count:
        text = original_text(rng)
        if text not in seen:
            seen.add(text)
            yield text
