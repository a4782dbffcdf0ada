"""What every entity matcher implements, and the match it returns."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from bubogpt.grounding.schema import EntityMatch


@dataclass(frozen=True)
class Settled:
    """Matches of an answer still being written that no appended text can change."""

    matches: list[EntityMatch]
    resume: int  # a later call on the longer answer may start matching here


class EntityMatcher(abc.ABC):
    """Links spans of an answer to entity labels."""

    @abc.abstractmethod
    def match(self, answer: str, entities: Sequence[str]) -> list[EntityMatch]:
        """Return non-overlapping matches sorted by start offset."""

    async def amatch(self, answer: str, entities: Sequence[str]) -> list[EntityMatch]:
        """Async form, for the asyncio server; matchers that do no I/O just run ``match``."""
        return self.match(answer, entities)

    def settled(self, answer: str, entities: Sequence[str], start: int = 0) -> Settled:
        """The matches of `answer[start:]`, an answer still being written, that no appended text can
        change. A matcher that cannot tell settles nothing (its matches come once the answer is done)."""
        return Settled([], start)
