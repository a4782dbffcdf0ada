"""Entity matching: which words of the LLM's answer name which grounded entity.

BuboGPT links the answer to the grounded objects by asking an LLM: it is given
``<List>e1, e2, ...</List><Text>answer</Text>`` and replies with ``span - entity`` lines.
Here that is ``LLMEntityMatcher`` (the served LLM, or any completion function, does the asking;
no external API), with a strict parser, and ``RuleEntityMatcher``, a deterministic matcher used on
the tiny model and whenever the LLM reply is unusable.

Both implement ``EntityMatcher.match(answer, entities) -> list[EntityMatch]``: spans are exact
character ranges of ``answer`` (``answer[m.start:m.end] == m.phrase``), sorted, never overlapping,
and ``entity_index`` points into ``entities`` (the first entry, when several labels normalise alike).

Phrase extent (rule matcher): the noun phrase without its article, i.e. numerals, quantity words
and adjectives directly before the noun are included, as in the paper's figures and the official
few-shot answers ("two black swans", "four dogs", "wild horses", "grassy field"); "the"/"a"/"its"
are not. Adjectives come from a closed word list (colours, sizes, materials, common descriptive
words); there is no part-of-speech tagger, so noun modifiers ("passenger train") are not included
unless the whole phrase is an entity.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from bubogpt.grounding.schema import EntityMatch

__all__ = [
    "DEFAULT_HYPONYMS",
    "DEFAULT_SYNONYMS",
    "EntityMatcher",
    "LLMEntityMatcher",
    "RuleEntityMatcher",
    "build_match_prompt",
    "normalize_label",
    "parse_match_reply",
]

log = logging.getLogger(__name__)

CompleteFn = Callable[[str], str] | Callable[[str], Awaitable[str]]


class EntityMatcher(abc.ABC):
    """Links spans of an answer to entity labels."""

    @abc.abstractmethod
    def match(self, answer: str, entities: Sequence[str]) -> list[EntityMatch]:
        """Return non-overlapping matches sorted by start offset."""

    async def amatch(self, answer: str, entities: Sequence[str]) -> list[EntityMatch]:
        """Async form, for the asyncio server; matchers that do no I/O just run ``match``."""
        return self.match(answer, entities)


# --------------------------------------------------------------------------------------------
# Word handling shared by both matchers
# --------------------------------------------------------------------------------------------

# A word: letters/digits, hyphenated compounds kept whole ("black-and-white", "t-shirt").
# Apostrophes end a word, so "swan's" yields "swan" and the possessive never widens a span.
_WORD_RE = re.compile(r"[^\W_]+(?:-[^\W_]+)*")
_ARTICLES = frozenset({"a", "an", "the"})

# Plurals that suffix rules cannot undo. Values are singular lemmas.
_IRREGULAR_PLURALS = {
    "people": "person",
    "persons": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "lice": "louse",
    "geese": "goose",
    "feet": "foot",
    "teeth": "tooth",
    "oxen": "ox",
    "dice": "die",
    "cacti": "cactus",
    "fungi": "fungus",
    "cattle": "cow",
}


def _singular_forms(word: str) -> set[str]:
    """The word plus every singular it could be the plural of.

    Deliberately over-generates ("houses" -> house, hous): a form only matters when it equals a
    form of an entity, so a wrong guess is harmless while a missed one loses a match.
    """
    forms = {word}
    if word in _IRREGULAR_PLURALS:
        forms.add(_IRREGULAR_PLURALS[word])
    if len(word) > 3 and word.endswith("men"):  # firemen, policemen, women
        forms.add(word[:-3] + "man")
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])  # swans, houses
        if word.endswith("es"):
            forms.add(word[:-2])  # boxes, benches, glasses
        if word.endswith("ies") and len(word) > 4:
            forms.add(word[:-3] + "y")  # puppies
        if word.endswith("ves"):
            forms.add(word[:-3] + "f")  # leaves, wolves
            forms.add(word[:-3] + "fe")  # knives
    return forms


def _squash(word: str) -> str:
    # Hyphens and spaces are spelling variants: "t-shirt" = "t shirt", "sun glasses" = "sunglasses".
    return word.replace("-", "")


def _phrase_forms(words: Sequence[str]) -> set[str]:
    """Lookup keys of a phrase (lower-case words): modifiers as written, the head singularised."""
    prefix = "".join(_squash(w) for w in words[:-1])
    return {prefix + _squash(form) for form in _singular_forms(words[-1])}


def _label_words(label: str) -> list[str]:
    """Lower-case words of a label, leading articles dropped ("The Swan!" -> ["swan"])."""
    words = _WORD_RE.findall(label.lower())
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return words


def normalize_label(label: str) -> str:
    """Case, punctuation and articles removed: ``" The  Traffic-Light. "`` -> ``"traffic-light"``."""
    return " ".join(_label_words(label))


# --------------------------------------------------------------------------------------------
# Built-in lexicon for the rule matcher
# --------------------------------------------------------------------------------------------

# Groups of words for the same thing (matched both ways). Singular lemmas.
DEFAULT_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("dog", "puppy", "pup", "doggy"),
    ("cat", "kitten", "kitty"),
    ("car", "automobile"),
    ("person", "human"),
    ("man", "guy", "gentleman"),
    ("woman", "lady"),
    ("child", "kid"),
    ("baby", "infant"),
    ("bicycle", "bike"),
    ("motorcycle", "motorbike"),
    ("truck", "lorry"),
    ("airplane", "aeroplane", "plane", "aircraft"),
    ("television", "tv"),
    ("sofa", "couch"),
    ("phone", "cellphone", "cell phone", "mobile phone", "smartphone", "telephone"),
    ("refrigerator", "fridge"),
    ("cup", "mug"),
    ("glasses", "eyeglasses", "spectacles"),
    ("trash can", "garbage can", "trash bin", "dustbin"),
    ("pants", "trousers"),
    ("rabbit", "bunny"),
    ("cow", "cattle"),
    ("sea", "ocean"),
    ("rock", "stone", "boulder"),
    ("road", "street"),
    ("grass", "lawn"),
    ("field", "meadow", "pasture"),
    ("drink", "beverage"),
)

# Hypernym -> more specific words. An entity matches a mention of a more specific kind
# ("bird" entity, "swans" in the answer), not the other way round: the tagger's tag for an
# object is usually the general word, and "animals" in an answer could be any of several.
DEFAULT_HYPONYMS: Mapping[str, tuple[str, ...]] = {
    "person": (
        "man", "woman", "boy", "girl", "child", "baby", "adult", "teenager", "player",
        "pedestrian", "rider", "skier", "surfer", "skateboarder", "snowboarder", "cyclist",
        "biker", "athlete", "tourist", "worker", "chef", "policeman", "police officer",
        "soldier", "student", "farmer",
    ),
    "child": ("boy", "girl", "toddler"),
    "bird": (
        "swan", "duck", "goose", "sparrow", "pigeon", "dove", "parrot", "eagle", "hawk", "owl",
        "seagull", "gull", "crow", "robin", "penguin", "flamingo", "pelican", "heron", "hen",
        "rooster", "finch", "woodpecker", "hummingbird", "ostrich", "duckling",
    ),
    "animal": (
        "dog", "cat", "horse", "cow", "sheep", "goat", "pig", "elephant", "giraffe", "zebra",
        "bear", "lion", "tiger", "deer", "monkey", "rabbit", "bird", "fox", "wolf", "squirrel",
        "mouse",
    ),
    "dog": (
        "corgi", "poodle", "retriever", "labrador", "terrier", "sheepdog", "bulldog", "husky",
        "german shepherd", "beagle", "dachshund", "chihuahua", "pug", "collie",
    ),
    "horse": ("pony", "foal", "stallion", "mare"),
    "sheep": ("lamb",),
    "pig": ("piglet", "hog"),
    "duck": ("duckling",),
    "chicken": ("hen", "rooster", "chick"),
    "water": ("lake", "river", "sea", "ocean", "pond", "stream", "creek", "canal", "bay", "lagoon"),
    "vehicle": (
        "car", "truck", "bus", "van", "motorcycle", "taxi", "jeep", "suv", "tractor", "ambulance",
    ),
    "car": ("taxi", "cab", "sedan", "suv", "jeep"),
    "boat": ("ship", "sailboat", "canoe", "kayak", "yacht", "ferry"),
    "tree": ("pine", "oak", "palm", "maple", "birch", "willow", "fir"),
    "flower": ("rose", "tulip", "daisy", "sunflower", "lily", "orchid", "dandelion"),
    # No "orange": it is far more often the colour.
    "fruit": (
        "apple", "banana", "grape", "strawberry", "pear", "lemon", "cherry", "peach",
        "pineapple", "watermelon", "mango", "berry",
    ),
    "food": (
        "sandwich", "pizza", "burger", "hamburger", "salad", "pasta", "soup", "cake", "bread",
        "fries", "rice", "noodle", "sushi",
    ),
    "drink": ("coffee", "tea", "juice", "soda", "beer", "wine"),
    "furniture": ("chair", "table", "sofa", "couch", "bed", "desk", "shelf", "cabinet"),
    "building": (
        "house", "skyscraper", "tower", "church", "barn", "cabin", "hut", "castle", "temple",
        "cathedral",
    ),
    "bag": ("backpack", "handbag", "purse", "suitcase"),
    "hat": ("cap", "beanie"),
    "shoe": ("sneaker", "boot", "sandal"),
    "computer": ("laptop",),
}

# Two-word compounds in which the first word is no mention of its own: the "water" of "water
# bottle" is not the lake. The value says whether the second word is no mention either:
# a hot dog is no dog, while a water bottle is still a bottle.
_COMPOUNDS: Mapping[str, bool] = {
    _squash("".join(c.split())): head_blocked
    for c, head_blocked in (
        ("hot dog", True), ("teddy bear", True), ("sea lion", True), ("horse shoe", True),
        ("water bottle", False), ("traffic light", False), ("street light", False),
        ("bus stop", False), ("fire hydrant", False), ("fire truck", False),
        ("dog house", False), ("bird house", False), ("tree house", False), ("dog food", False),
        ("cat food", False), ("bird feeder", False), ("sea shell", False),
        ("water tower", False), ("pine cone", False), ("car park", False),
    )
}

# Words kept in front of the noun. Colours are listed apart to reject e.g. "white swan" for
# an entity "black swan" when only the head noun matched.
_HUES = frozenset({
    "black", "white", "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown",
    "grey", "gray", "golden", "gold", "silver", "beige", "tan", "navy", "turquoise", "maroon",
})
_QUANTITIES = frozenset({
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "twenty", "hundred", "dozen", "several", "multiple", "many", "numerous",
})
_ADJECTIVES = _HUES | frozenset({
    # colour qualifiers and patterns
    "dark", "light", "pale", "bright", "colorful", "colourful", "multicolored", "multicoloured",
    "striped", "spotted", "dotted", "checkered", "plaid",
    # size and shape
    "small", "large", "big", "little", "tiny", "huge", "giant", "tall", "short", "long", "wide",
    "narrow", "thin", "thick", "round", "square", "fat", "massive", "enormous",
    # age, state, look
    "young", "old", "new", "adult", "baby", "wild", "wet", "dry", "clean", "dirty", "empty",
    "full", "open", "closed", "calm", "fluffy", "furry", "cute", "beautiful", "pretty", "lush",
    "grassy", "sandy", "rocky", "snowy", "sunny", "cloudy", "clear", "busy", "male", "female",
    "elderly", "wooden", "metal", "metallic", "plastic", "glass", "stone", "brick", "leather",
    "paper", "ceramic", "concrete", "marble", "steel", "fresh", "ripe", "sliced",
})
_MAX_MODIFIERS = 4


def _is_modifier(word: str) -> bool:
    if word.isdigit() or word in _QUANTITIES or word in _ADJECTIVES:
        return True
    parts = word.split("-")
    if len(parts) > 1:
        # "black-and-white", "dark-brown", "red-colored"
        return all(p in _ADJECTIVES or p in {"and", "or", "colored", "coloured"} for p in parts)
    return False


@dataclass(frozen=True)
class _Token:
    start: int
    end: int
    word: str  # lower-case


# Match ranks: a lower rank wins when one span could name several entities.
_EXACT, _SYNONYM, _HYPONYM, _HEAD = 0, 1, 2, 3


class RuleEntityMatcher(EntityMatcher):
    """Deterministic matcher: normalised words, plurals, a small synonym/hypernym table.

    Scans the answer left to right; at each word the longest phrase naming an entity wins (so
    "traffic lights" goes to "traffic light", not to "light"); ties go to the best rank (same
    word < synonym < more specific kind < head noun of a multi-word label), then to the
    earlier entity. Numerals and adjectives just before the noun join the phrase; adjacent
    mentions of the same entity merge ("palm trees" for "tree").

    ``synonyms`` adds groups to the built-in ones; ``hyponyms`` adds hypernym -> words entries.
    """

    def __init__(
        self,
        synonyms: Iterable[Iterable[str]] = (),
        hyponyms: Mapping[str, Iterable[str]] | None = None,
        include_modifiers: bool = True,
    ) -> None:
        self.include_modifiers = include_modifiers
        groups = [tuple(g) for g in DEFAULT_SYNONYMS] + [tuple(g) for g in synonyms]
        table: dict[str, list[str]] = {k: list(v) for k, v in DEFAULT_HYPONYMS.items()}
        for hypernym, words in (hyponyms or {}).items():
            table.setdefault(hypernym, []).extend(words)

        # Tables are keyed by the exact squashed lemma (not its plural guesses), so that e.g.
        # an entity "glass" is not taken for the "glasses" group.
        self._synonyms: dict[str, set[str]] = {}
        for group in groups:
            for member in group:
                self._synonyms.setdefault(self._lemma_key(member), set()).update(group)
        self._hyponyms: dict[str, set[str]] = {}
        for hypernym in table:
            self._hyponyms[self._lemma_key(hypernym)] = self._closure(hypernym, table)

    @staticmethod
    def _lemma_key(lemma: str) -> str:
        return "".join(_squash(w) for w in _label_words(lemma))

    def _closure(self, hypernym: str, table: Mapping[str, Iterable[str]]) -> set[str]:
        """All more specific words, transitively ("animal" -> "bird" -> "swan"), with synonyms."""
        seen: set[str] = set()
        stack = list(table.get(hypernym, ()))
        while stack:
            word = stack.pop()
            if word in seen:
                continue
            seen.add(word)
            stack.extend(table.get(word, ()))
            stack.extend(self._synonyms.get(self._lemma_key(word), ()))
        return seen

    # -- index of the entities of one call ----------------------------------------------------

    def _build_index(self, entities: Sequence[str]) -> tuple[dict[str, list[tuple[int, int]]], int]:
        """key -> [(rank, entity_index)], and the longest key in words."""
        index: dict[str, list[tuple[int, int]]] = {}
        max_words = 1

        def add(words: Sequence[str], rank: int, entity: int) -> None:
            nonlocal max_words
            if not words:
                return
            max_words = max(max_words, len(words))
            for key in _phrase_forms(words):
                index.setdefault(key, []).append((rank, entity))

        seen: set[str] = set()
        for i, label in enumerate(entities):
            words = _label_words(label)
            norm = " ".join(words)
            if not words or norm in seen:
                continue  # later duplicates of a label: the first entry stands for them
            seen.add(norm)
            add(words, _EXACT, i)
            lemmas = _phrase_forms(words)
            synonyms = set().union(*(self._synonyms.get(k, set()) for k in lemmas))
            for word in synonyms:
                add(_label_words(word), _SYNONYM, i)
            for key in lemmas | {self._lemma_key(s) for s in synonyms}:
                for word in self._hyponyms.get(key, ()):
                    add(_label_words(word), _HYPONYM, i)
            if len(words) > 1 and all(_is_modifier(w) for w in words[:-1]):
                # "black swan" also answers to "swan" (checked against colour clashes later).
                add(words[-1:], _HEAD, i)
        return index, max_words

    # -- matching -----------------------------------------------------------------------------

    def match(self, answer: str, entities: Sequence[str]) -> list[EntityMatch]:
        if not answer or not entities:
            return []
        index, max_words = self._build_index(entities)
        if not index:
            return []
        tokens = [_Token(m.start(), m.end(), m.group().lower()) for m in _WORD_RE.finditer(answer)]
        # joined[i]: token i and i + 1 are separated by whitespace only, so they can be one phrase.
        joined = [
            tokens[i].end < tokens[i + 1].start and answer[tokens[i].end : tokens[i + 1].start].isspace()
            for i in range(len(tokens) - 1)
        ]

        def phrase_len_limit(i: int) -> int:
            n = 1
            # +1: a squashed key may be spelt as two words ("pine apple").
            while n < max_words + 1 and i + n < len(tokens) and joined[i + n - 1]:
                n += 1
            return n

        spans: list[tuple[int, int, int, int]] = []  # (first token, last token + 1, entity, rank)
        free_from = 0  # first token not yet inside a match
        i = 0
        while i < len(tokens):
            hit = None
            for n in range(phrase_len_limit(i), 0, -1):
                words = [t.word for t in tokens[i : i + n]]
                candidates = [c for key in _phrase_forms(words) for c in index.get(key, ())]
                if not candidates:
                    continue
                if n == 1 and self._inside_compound(tokens, joined, i, index):
                    continue
                rank, entity = min(candidates)
                hit = (n, rank, entity)
                break
            if hit is None:
                i += 1
                continue
            n, rank, entity = hit
            first = i
            if self.include_modifiers:
                while (
                    first > free_from
                    and i - first < _MAX_MODIFIERS
                    and joined[first - 1]
                    and _is_modifier(tokens[first - 1].word)
                ):
                    first -= 1
            if rank == _HEAD and self._colour_clash(tokens[first:i], entities[entity]):
                i += 1
                continue
            spans.append((first, i + n, entity, rank))
            free_from = i = i + n

        # Adjacent mentions of one entity are one phrase ("palm trees", both naming "tree").
        merged: list[tuple[int, int, int, int]] = []
        for span in spans:
            if merged and merged[-1][2] == span[2] and merged[-1][1] == span[0] and joined[span[0] - 1]:
                prev = merged.pop()
                span = (prev[0], span[1], span[2], min(prev[3], span[3]))
            merged.append(span)

        out = []
        for first, last, entity, _ in merged:
            start, end = tokens[first].start, tokens[last - 1].end
            out.append(EntityMatch(answer[start:end], start, end, entity, entities[entity]))
        return out

    @staticmethod
    def _inside_compound(
        tokens: Sequence[_Token], joined: Sequence[bool], i: int, index: Mapping[str, object]
    ) -> bool:
        """Is word i half of a compound naming something else ("hot dog", "water bottle")?"""
        # (words, is word i the head of the pair)
        pairs: list[tuple[tuple[str, str], bool]] = []
        if i > 0 and joined[i - 1]:
            pairs.append(((tokens[i - 1].word, tokens[i].word), True))
        if i + 1 < len(tokens) and joined[i]:
            pairs.append(((tokens[i].word, tokens[i + 1].word), False))
        for pair, is_head in pairs:
            forms = _phrase_forms(pair)
            # A compound that is itself an entity is matched as the longer phrase instead.
            if any(f in index for f in forms):
                continue
            for form in forms:
                if form in _COMPOUNDS and (_COMPOUNDS[form] or not is_head):
                    return True
        return False

    @staticmethod
    def _colour_clash(modifiers: Sequence[_Token], label: str) -> bool:
        said = {t.word for t in modifiers} & _HUES
        wanted = set(_label_words(label)) & _HUES
        return bool(said and wanted and not said & wanted)


# --------------------------------------------------------------------------------------------
# LLM matcher
# --------------------------------------------------------------------------------------------

_INSTRUCTION = (
    "Link the things mentioned in a text to the names in a list.\n"
    "For every object in the text that is one of the listed names (the same thing, a synonym, "
    "or a more specific kind of it), write one line: span - name\n"
    "- span is copied word for word from the text: the noun phrase with its numbers and "
    "adjectives, without leading articles.\n"
    "- name is copied exactly from the list. Never use a name that is not in the list.\n"
    "- One name per span. If the text names nothing in the list, write NONE.\n"
    "- Write nothing else.\n"
)

# Few-shot examples in the spirit of the official prompt (our own wording).
_EXAMPLES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (
        ("cat", "sofa", "pillow", "window", "lamp", "living room"),
        "A grey kitten is curled up on the sofa next to two striped pillows, "
        "with sunlight coming through the window.",
        "grey kitten - cat\nsofa - sofa\ntwo striped pillows - pillow\nwindow - window",
    ),
    (
        ("person", "surfboard", "wave", "beach", "sky"),
        "A young woman carries a yellow surfboard along the beach while large waves roll in "
        "under a cloudy sky.",
        "young woman - person\nyellow surfboard - surfboard\nbeach - beach\n"
        "large waves - wave\ncloudy sky - sky",
    ),
    (
        ("bus", "road", "tree", "building", "traffic light"),
        "The picture shows a red double-decker bus stopped at the traffic lights on a busy city "
        "street lined with tall buildings.",
        "red double-decker bus - bus\ntraffic lights - traffic light\n"
        "busy city street - road\ntall buildings - building",
    ),
    (
        ("dog", "frisbee", "grass"),
        "The audio is a church bell ringing several times in the distance.",
        "NONE",
    ),
)


def _list_block(entities: Sequence[str], text: str) -> str:
    # Commas separate the list entries, so a label cannot contain one.
    names = ", ".join(" ".join(e.replace(",", " ").split()) for e in entities)
    return f"<List>{names}</List><Text>{text}</Text>"


def build_match_prompt(answer: str, entities: Sequence[str]) -> str:
    """The matching prompt (plain text; the completion function applies any chat template)."""
    parts = [_INSTRUCTION]
    for names, text, reply in _EXAMPLES:
        parts.append(f"{_list_block(names, text)}\n{reply}\n")
    parts.append(f"{_list_block(entities, answer)}\n")
    return "\n".join(parts)


_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_SEPARATOR_RE = re.compile(r"\s+[-\u2013\u2014]\s+")  # " - ", en dash, em dash
_STRIP_CHARS = " \t\"'`*[](){}<>"


def parse_match_reply(reply: str, answer: str, entities: Sequence[str]) -> list[EntityMatch]:
    """Strict parse of ``span - entity`` lines into matches of ``answer``.

    Kept: lines whose entity is in ``entities`` (case/punctuation/article-insensitive; a plural
    of a listed name is accepted) and whose span occurs in ``answer`` as whole words
    (case-insensitive, any whitespace). Each span takes its leftmost occurrence not already
    taken; longer spans are placed first, so "two black swans" and a later "swans" land on
    different mentions. A span text already linked to another entity is dropped. Everything
    else is dropped.
    """
    lookup_exact: dict[str, int] = {}
    lookup_forms: dict[str, int] = {}
    for i, label in enumerate(entities):
        words = _label_words(label)
        if words:
            lookup_exact.setdefault(" ".join(words), i)
            for form in _phrase_forms(words):
                lookup_forms.setdefault(form, i)

    pairs: list[tuple[str, int]] = []
    for raw in reply.splitlines():
        line = _BULLET_RE.sub("", raw).strip()
        seps = list(_SEPARATOR_RE.finditer(line))
        if not seps:
            continue
        # The last separator: a span may contain a spaced dash, a list name hardly ever does.
        sep = seps[-1]
        span = line[: sep.start()].strip(_STRIP_CHARS)
        name = line[sep.end() :].strip(_STRIP_CHARS).rstrip(".,;:!").strip(_STRIP_CHARS)
        words = _label_words(name)
        if not span or not words:
            continue
        entity = lookup_exact.get(" ".join(words))
        if entity is None:
            entity = next((lookup_forms[f] for f in _phrase_forms(words) if f in lookup_forms), None)
        if entity is None:
            log.debug("matching: dropped %r: %r is not in the entity list", raw, name)
            continue
        pairs.append((span, entity))

    taken: list[tuple[int, int]] = []
    linked: dict[str, int] = {}
    out: list[EntityMatch] = []
    # Stable sort: longest spans first, reply order among equals.
    for span, entity in sorted(pairs, key=lambda p: -len(p[0])):
        key = " ".join(span.lower().split())
        if linked.setdefault(key, entity) != entity:
            log.debug("matching: dropped %r - %r: span already linked to another entity", span, entities[entity])
            continue
        for found in _span_pattern(span).finditer(answer):
            start, end = found.span()
            if all(end <= s or start >= e for s, e in taken):
                taken.append((start, end))
                out.append(EntityMatch(answer[start:end], start, end, entity, entities[entity]))
                break
        else:
            log.debug("matching: dropped %r: no free whole-word occurrence in the answer", span)
    return sorted(out, key=lambda m: m.start)


def _span_pattern(span: str) -> re.Pattern[str]:
    body = r"\s+".join(re.escape(w) for w in span.split())
    # Whole words only: "swan" must not match inside "swanky".
    if span[0].isalnum():
        body = r"(?<![^\W_])" + body
    if span[-1].isalnum():
        body += r"(?![^\W_])"
    return re.compile(body, re.IGNORECASE)


class LLMEntityMatcher(EntityMatcher):
    """Asks an LLM with the paper's ``<List>..</List><Text>..</Text>`` prompt.

    ``complete`` maps a prompt to the model's reply; it may be a plain or an async function
    (the server passes its engine's generate). A reply with no usable line, a failing call or
    a non-string reply falls back to ``fallback`` (a ``RuleEntityMatcher`` by default).
    """

    def __init__(self, complete: CompleteFn, fallback: EntityMatcher | None = None) -> None:
        self._complete = complete
        self.fallback = fallback if fallback is not None else RuleEntityMatcher()

    def build_prompt(self, answer: str, entities: Sequence[str]) -> str:
        return build_match_prompt(answer, entities)

    def match(self, answer: str, entities: Sequence[str]) -> list[EntityMatch]:
        if not answer.strip() or not entities:
            return []
        prompt = self.build_prompt(answer, entities)
        try:
            reply = self._complete(prompt)
        except Exception as exc:  # the LLM is best effort; the rule matcher always answers
            return self._fall_back(answer, entities, f"completion failed: {exc!r}")
        if inspect.isawaitable(reply):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                if inspect.iscoroutine(reply):
                    reply.close()
                raise RuntimeError("async completion function inside a running event loop: use amatch()")
            try:
                reply = asyncio.run(_await(reply))
            except Exception as exc:
                return self._fall_back(answer, entities, f"completion failed: {exc!r}")
        return self._finish(reply, answer, entities)

    async def amatch(self, answer: str, entities: Sequence[str]) -> list[EntityMatch]:
        if not answer.strip() or not entities:
            return []
        prompt = self.build_prompt(answer, entities)
        try:
            if inspect.iscoroutinefunction(self._complete):
                reply = await self._complete(prompt)
            else:
                # A blocking completion must not stall the server's event loop.
                reply = await asyncio.to_thread(self._complete, prompt)
                if inspect.isawaitable(reply):
                    reply = await reply
        except Exception as exc:
            return self._fall_back(answer, entities, f"completion failed: {exc!r}")
        return self._finish(reply, answer, entities)

    def _finish(self, reply: object, answer: str, entities: Sequence[str]) -> list[EntityMatch]:
        if not isinstance(reply, str):
            return self._fall_back(answer, entities, f"reply is {type(reply).__name__}, not str")
        matches = parse_match_reply(reply, answer, entities)
        if not matches:
            return self._fall_back(answer, entities, f"no usable 'span - entity' line in reply {reply[:200]!r}")
        return matches

    def _fall_back(self, answer: str, entities: Sequence[str], why: str) -> list[EntityMatch]:
        log.info("entity matching: LLM %s; using the rule matcher", why)
        return self.fallback.match(answer, entities)


async def _await(awaitable: Awaitable[str]) -> str:
    return await awaitable
