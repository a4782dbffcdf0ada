"""Entity matching: which words of the LLM's answer name which grounded entity.

BuboGPT links the answer to the grounded objects by asking an LLM: it is given
``<List>e1, e2, ...</List><Text>answer</Text>`` and replies with ``span - entity`` lines.
Here that is ``LLMEntityMatcher`` (the served LLM, or any completion function, does the asking;
no external API), with a strict parser, and ``RuleEntityMatcher``, a deterministic matcher used on
the tiny model and whenever the LLM reply is unusable.

Both implement ``EntityMatcher.match(answer, entities) -> list[EntityMatch]``: spans are exact
character ranges of ``answer`` (``answer[m.start:m.end] == m.phrase``), sorted, never overlapping,
and ``entity_index`` points into ``entities`` (the first entry, when several labels normalise alike).

    base.py          EntityMatcher (the interface)
    words.py         words of a label, plural guesses, lookup keys, normalize_label
    lexicon.py       synonyms, hypernyms, compounds, modifier word lists (rule matcher)
    rule_matcher.py  RuleEntityMatcher
    llm_matcher.py   LLMEntityMatcher, build_match_prompt, parse_match_reply
"""

from bubogpt.grounding.matching.base import EntityMatcher
from bubogpt.grounding.matching.lexicon import DEFAULT_HYPONYMS, DEFAULT_SYNONYMS
from bubogpt.grounding.matching.llm_matcher import (
    CompleteFn,
    LLMEntityMatcher,
    build_match_prompt,
    parse_match_reply,
)
from bubogpt.grounding.matching.rule_matcher import RuleEntityMatcher
from bubogpt.grounding.matching.words import normalize_label
from bubogpt.grounding.schema import EntityMatch

__all__ = [
    "DEFAULT_HYPONYMS",
    "DEFAULT_SYNONYMS",
    "CompleteFn",
    "EntityMatch",
    "EntityMatcher",
    "LLMEntityMatcher",
    "RuleEntityMatcher",
    "build_match_prompt",
    "normalize_label",
    "parse_match_reply",
]
