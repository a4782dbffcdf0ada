"""The deterministic matcher: used on the tiny model and whenever the LLM's reply is unusable.

Phrase extent: the noun phrase without its article, i.e. numerals, quantity words and adjectives
directly before the noun are included, as in the paper's figures and the official few-shot answers
("two black swans", "four dogs", "wild horses", "grassy field"); "the"/"a"/"its" are not. Adjectives
come from a closed word list (`lexicon.py`); there is no part-of-speech tagger, so noun modifiers
("passenger train") are not included unless the whole phrase is an entity.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bubogpt.grounding.matching.base import EntityMatcher, Settled
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


@dataclass(frozen=True)
class _Index:
    keys: dict[str, list[tuple[int, int]]]  # lookup key -> [(rank, entity_index)]
    max_words: int  # the longest key, in words
    sorted_keys: list[str]  # for prefix lookups (can more words still complete a key?)

    def has_prefix(self, prefix: str) -> bool:
        at = bisect.bisect_left(self.sorted_keys, prefix)
        return at < len(self.sorted_keys) and self.sorted_keys[at].startswith(prefix)


def _tokens(answer: str, start: int = 0) -> list[_Token]:
    """The words of `answer[start:]`, lower-cased, with their offsets in `answer`."""
    return [_Token(m.start(), m.end(), m.group().lower()) for m in WORD_RE.finditer(answer, start)]


def _is_break(answer: str, at: int) -> bool:
    """Is the character at `at` (outside any word) one no rule joins words across? Everything but
    spaces; a hyphen at the very end may still become part of a word ("hot-" + "dog")."""
    char = answer[at]
    return not char.isspace() and (char != "-" or at + 1 < len(answer))


def _complete(answer: str, token: _Token) -> bool:
    """Can no appended text change this word? Not when it ends the text or a hyphen does."""
    return token.end < len(answer) and not (answer[token.end] == "-" and token.end + 1 == len(answer))


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
        # the indexes of recent label lists: a streamed answer is matched again at every word
        self._indexes: OrderedDict[tuple[str, ...], _Index] = OrderedDict()

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

    def _index(self, entities: Sequence[str]) -> _Index:
        key = tuple(entities)
        index = self._indexes.get(key)
        if index is None:
            keys, max_words = self._build_index(entities)
            index = self._indexes[key] = _Index(keys, max_words, sorted(keys))
            if len(self._indexes) > 256:
                self._indexes.popitem(last=False)
        else:
            self._indexes.move_to_end(key)
        return index

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
        index = self._index(entities)
        tokens = _tokens(answer)
        return [match for match, _ in self._scan(answer, entities, index, tokens)]

    def settled(self, answer: str, entities: Sequence[str], start: int = 0) -> Settled:
        """The matches of `answer[start:]` (an answer still being written) that no appended text can
        change. A match is settled when, after it,
          - a break follows (any separator but spaces: "dog,", "dog.", "dog's"; no rule joins words
            across one), or
          - the first complete word after it can neither continue a phrase that reaches it, nor start
            a phrase (a modifier or the first word of a key), so it cannot merge with what comes next
            ("dogs and", "dog on"), or
          - enough complete words follow that nothing later is within reach of any rule.
        `start` must be 0 or a `resume` from an earlier call on a prefix of this answer."""
        if not answer or not entities:
            return Settled([], start)
        index = self._index(entities)
        tokens = _tokens(answer, start)
        breaks_after = [False] * len(tokens)  # a break between token i and the next word (or the end)
        resume = start
        for i, token in enumerate(tokens):
            gap_end = tokens[i + 1].start if i + 1 < len(tokens) else len(answer)
            breaks_after[i] = any(_is_break(answer, at) for at in range(token.end, gap_end))
            if breaks_after[i]:
                resume = token.end  # text before a break can no longer change any match
        for i in range(len(breaks_after) - 2, -1, -1):
            breaks_after[i] = breaks_after[i] or breaks_after[i + 1]  # now: a break somewhere after i
        # modifiers, then a hit, then the rest of its phrase and the word deciding a compound
        reach = MAX_MODIFIERS + index.max_words + 2
        out = []
        for match, last in self._scan(answer, entities, index, tokens):
            if breaks_after[last]:
                out.append(match)
                continue
            after = [t for t in tokens[last + 1 : last + 1 + reach] if _complete(answer, t)]
            if len(after) >= reach or (after and self._cannot_join(tokens, last, index)):
                out.append(match)
        return Settled(out, resume)

    def _cannot_join(self, tokens: Sequence[_Token], last: int, index: _Index) -> bool:
        """Can word `last + 1` neither continue a phrase ending at `last` nor start one?"""
        word = tokens[last + 1].word
        if is_modifier(word):
            return False
        # (as the last word of a key it is matched already: the text so far holds it whole)
        word = squash(word)
        if index.has_prefix(word):
            return False  # it may start a phrase, which would merge with this one if it names the same
        prefix = ""
        # the phrases that end at `last` and that word `last + 1` could continue
        for j in range(last, max(-1, last - index.max_words - 1), -1):
            prefix = squash(tokens[j].word) + prefix
            if index.has_prefix(prefix + word):
                return False
        return True
    def _scan(
        self, answer: str, entities: Sequence[str], lookup: _Index, tokens: Sequence[_Token]
    ) -> list[tuple[EntityMatch, int]]:
        """Matches over `tokens`, each with the index of its last token."""
        index, max_words = lookup.keys, lookup.max_words
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
            out.append((EntityMatch(answer[start:end], start, end, entity, entities[entity]), last - 1))
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
