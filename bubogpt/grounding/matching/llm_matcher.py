"""The LLM matcher: BuboGPT's ``<List>e1, e2, ...</List><Text>answer</Text>`` prompt, the strict
parser of the ``span - entity`` reply lines, and the fallback to the rule matcher.

The served LLM, or any completion function, does the asking; no external API.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Sequence

from bubogpt.grounding.matching.base import EntityMatcher
from bubogpt.grounding.matching.rule_matcher import RuleEntityMatcher
from bubogpt.grounding.matching.words import label_words, phrase_forms
from bubogpt.grounding.schema import EntityMatch

log = logging.getLogger(__name__)

CompleteFn = Callable[[str], str] | Callable[[str], Awaitable[str]]


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
        words = label_words(label)
        if words:
            lookup_exact.setdefault(" ".join(words), i)
            for form in phrase_forms(words):
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
        words = label_words(name)
        if not span or not words:
            continue
        entity = lookup_exact.get(" ".join(words))
        if entity is None:
            entity = next((lookup_forms[f] for f in phrase_forms(words) if f in lookup_forms), None)
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
