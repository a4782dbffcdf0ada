"""What every entity matcher implements, and the match it returns."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from bubogpt.grounding.schema import EntityMatch


class EntityMatcher(abc.ABC):
    """Links spans of an answer to entity labels."""

    @abc.abstractmethod
    def match(self, answer: str, entities: Sequence[str]) -> list[EntityMatch]:
        """Return non-overlapping matches sorted by start offset."""

    async def amatch(self, answer: str, entities: Sequence[str]) -> list[EntityMatch]:
        """Async form, for the asyncio server; matchers that do no I/O just run ``match``."""
        return self.match(answer, entities)
