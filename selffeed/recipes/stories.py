"""The offline demo corpus: simple stories from a known grammar, and a checker that parses them.

A story is an opening, a character (adjective, animal, name), a home, one to three events each
followed by the reaction that event calls for, and "The end."::

    Once upon a time, there was a shy fox named Mia. Mia lived in a big forest. One day, Mia lost
    her hat. She was sad. Then, Mia met an old owl. They became friends. The end.

The checker enforces what a small model gets wrong first: the name stays the same throughout, the
pronouns match the character (Mia is "she"/"her"), each event gets its own reaction, "a"/"an" agrees
with the next word, and the first event starts with "One day" and later ones with "Then". Words are
drawn with Zipf-like weights, so the corpus has a long tail of rare names, places and objects: the
tail a model trained on its own samples loses first.

>>> story = generate(random.Random(0))
>>> is_wellformed(story), is_wellformed(story.replace(" The end.", ""))
(True, False)
"""

from __future__ import annotations

import random
import re

OPENINGS = ["Once upon a time", "Long ago", "One sunny day", "In a faraway land"]
NAMES = {  # name -> pronoun; she/her and he/his
    "Mia": "she", "Tom": "he", "Lily": "she", "Ben": "he", "Anna": "she", "Max": "he", "Zoe": "she",
    "Sam": "he", "Ella": "she", "Leo": "he", "Ruby": "she", "Jack": "he", "Nora": "she", "Finn": "he",
    "Ivy": "she", "Otto": "he",
}
ADJECTIVES = ["little", "happy", "brave", "shy", "old", "kind", "clever", "tiny", "young", "funny", "quiet", "eager"]
ANIMALS = ["cat", "dog", "fox", "rabbit", "bear", "owl", "mouse", "duck", "frog", "lion", "horse", "elephant"]
PLACES = [
    "in a big forest", "in a small town", "near the sea", "on a farm", "by a river", "in a tall tree",
    "under a bridge", "in a green valley", "on a hill", "in the city", "near a lake", "in an old house",
]
OBJECTS = ["ball", "hat", "kite", "box", "apple", "book", "key", "shell", "map", "drum", "umbrella", "egg"]
EVENTS = ["found", "lost", "met", "storm"]
REACTIONS = {"found": "{P} was happy.", "lost": "{P} was sad.", "met": "They became friends.", "storm": "{P} was scared."}
POSSESSIVE = {"she": "her", "he": "his"}


def _zipf(rng: random.Random, items: list[str]) -> str:
    return rng.choices(items, weights=[1 / (i + 1) for i in range(len(items))])[0]


def article(word: str) -> str:
    """``a`` or ``an`` for the word that follows: ``article('owl') == 'an'``."""
    return "an" if word[0] in "aeiou" else "a"


def _event(rng: random.Random, name: str, pronoun: str, first: bool) -> str:
    kind = rng.choice(EVENTS)
    if kind == "found":
        obj = _zipf(rng, OBJECTS)
        act = f"found {article(obj)} {obj}"
    elif kind == "lost":
        act = f"lost {POSSESSIVE[pronoun]} {_zipf(rng, OBJECTS)}"
    elif kind == "met":
        adj, animal = _zipf(rng, ADJECTIVES), _zipf(rng, ANIMALS)
        act = f"met {article(adj)} {adj} {animal}"
    else:
        act = "saw a big storm"
    lead = "One day" if first else "Then"
    return f"{lead}, {name} {act}. " + REACTIONS[kind].format(P=pronoun.capitalize())


def generate(rng: random.Random) -> str:
    """One well-formed story drawn with ``rng``."""
    name = _zipf(rng, list(NAMES))
    adj, animal = _zipf(rng, ADJECTIVES), _zipf(rng, ANIMALS)
    parts = [
        f"{rng.choice(OPENINGS)}, there was {article(adj)} {adj} {animal} named {name}.",
        f"{name} lived {_zipf(rng, PLACES)}.",
    ]
    parts += [_event(rng, name, NAMES[name], i == 0) for i in range(rng.randint(1, 3))]
    return " ".join(parts + ["The end."])


def corpus(n: int, seed: int) -> list[str]:
    """``n`` stories, deterministic in ``seed``."""
    rng = random.Random(seed)
    return [generate(rng) for _ in range(n)]


def _alt(words: list[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_INTRO = re.compile(
    rf"({_alt(OPENINGS)}), there was (an?) ({_alt(ADJECTIVES)}) ({_alt(ANIMALS)}) named ({_alt(list(NAMES))})\."
)
_HOME = re.compile(rf"({_alt(list(NAMES))}) lived ({_alt(PLACES)})\.")
_EVENT = re.compile(
    rf"(One day|Then), ({_alt(list(NAMES))}) "
    rf"(?:found (an?) ({_alt(OBJECTS)})|lost (his|her) ({_alt(OBJECTS)})|met (an?) ({_alt(ADJECTIVES)}) "
    rf"({_alt(ANIMALS)})|saw a big storm)\."
)


def problem(story: str) -> str | None:
    """Why ``story`` is not well-formed, or None when it parses.

    >>> problem("Once upon a time, there was a shy fox named Mia. Mia lived on a farm. "
    ...         "One day, Mia lost his hat. She was sad. The end.")
    "sentence 3: 'his' does not match Mia"
    """
    sentences = re.findall(r"[^.]*\.", story.strip())
    if "".join(sentences).strip() != story.strip() or len(sentences) < 5:
        return "not a sequence of at least 5 sentences"
    sentences = [s.strip() for s in sentences]
    m = _INTRO.fullmatch(sentences[0])
    if not m:
        return "sentence 1: not an introduction"
    if m[2] != article(m[3]):
        return f"sentence 1: '{m[2]} {m[3]}'"
    name = m[5]
    pronoun = NAMES[name]
    m = _HOME.fullmatch(sentences[1])
    if not m or m[1] != name:
        return "sentence 2: not where the character lives"
    events = sentences[2:-1]
    if sentences[-1] != "The end.":
        return "no ending 'The end.'"
    if len(events) % 2 or not 2 <= len(events) <= 6:
        return "not one to three events, each with its reaction"
    for i in range(0, len(events), 2):
        where = f"sentence {i + 3}"
        m = _EVENT.fullmatch(events[i])
        if not m:
            return f"{where}: not an event"
        if m[1] != ("One day" if i == 0 else "Then") or m[2] != name:
            return f"{where}: wrong lead or name"
        if m[3] and m[3] != article(m[4]) or m[7] and m[7] != article(m[8]):
            return f"{where}: wrong article"
        if m[5] and m[5] != POSSESSIVE[pronoun]:
            return f"{where}: '{m[5]}' does not match {name}"
        kind = "found" if m[3] else "lost" if m[5] else "met" if m[7] else "storm"
        if events[i + 1] != REACTIONS[kind].format(P=pronoun.capitalize()):
            return f"sentence {i + 4}: not the reaction to '{kind}'"
    return None


def is_wellformed(story: str) -> bool:
    """True when ``story`` parses under the grammar (see :func:`problem`)."""
    return problem(story) is None


def verify(prompt: str, completion: str) -> bool:
    """A ``filter.verifier`` for the demo: the prompt and its completion form a well-formed story."""
    return is_wellformed(prompt + completion)
