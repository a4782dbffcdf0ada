"""The deterministic matcher: used on the tiny model and whenever the LLM's reply is unusable.

Phrase extent: the noun phrase without its article, i.e. numerals, quantity words and adjectives
directly before the noun are included, as in the paper's figures and the official few-shot answers
("two black swans", "four dogs", "wild horses", "grassy field"); "the"/"a"/"its" are not. Adjectives
come from a closed word list (`lexicon.py`); there is no part-of-speech tagger, so noun modifiers
("passenger train") are not included unless the whole phrase is an entity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bubogpt.grounding.matching.base import EntityMatcher
from bubogpt.grounding.matching.lexicon import (
    COMPOUNDS,
    DEFAULT_HYPONYMS,
    DEFAULT_SYNONYMS,
    HUES,
    MAX_MODIFIERS,
    is_modifier,
)
from bubogpt.grounding.matching.words import WORD_RE, label_words, phrase_forms, squash
from bubogpt.grounding.schema import EntityMatch


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
        return "".join(squash(w) for w in label_words(lemma))

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
            for key in phrase_forms(words):
                index.setdefault(key, []).append((rank, entity))

        seen: set[str] = set()
        for i, label in enumerate(entities):
            words = label_words(label)
            norm = " ".join(words)
            if not words or norm in seen:
                continue  # later duplicates of a label: the first entry stands for them
            seen.add(norm)
            add(words, _EXACT, i)
            lemmas = phrase_forms(words)
            synonyms = set().union(*(self._synonyms.get(k, set()) for k in lemmas))
            for word in synonyms:
                add(label_words(word), _SYNONYM, i)
            for key in lemmas | {self._lemma_key(s) for s in synonyms}:
                for word in self._hyponyms.get(key, ()):
                    add(label_words(word), _HYPONYM, i)
            if len(words) > 1 and all(is_modifier(w) for w in words[:-1]):
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
        tokens = [_Token(m.start(), m.end(), m.group().lower()) for m in WORD_RE.finditer(answer)]
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
                candidates = [c for key in phrase_forms(words) for c in index.get(key, ())]
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
                    and i - first < MAX_MODIFIERS
                    and joined[first - 1]
                    and is_modifier(tokens[first - 1].word)
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
            forms = phrase_forms(pair)
            # A compound that is itself an entity is matched as the longer phrase instead.
            if any(f in index for f in forms):
                continue
            for form in forms:
                if form in COMPOUNDS and (COMPOUNDS[form] or not is_head):
                    return True
        return False

    @staticmethod
    def _colour_clash(modifiers: Sequence[_Token], label: str) -> bool:
        said = {t.word for t in modifiers} & HUES
        wanted = set(label_words(label)) & HUES
        return bool(said and wanted and not said & wanted)
