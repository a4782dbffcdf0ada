"""Matching while the answer is being written: each phrase is linked to its entity as soon as no later
text can change the match (the paper's promise: point at an object while describing it).

`IncrementalMatcher.settled(text)` asks the matcher which matches of the answer so far are settled
(`EntityMatcher.settled`: no appended text can change them) and returns those not returned before;
`finish(text)` returns the complete answer's matches not returned yet. So the matches returned over a
whole answer are exactly what the matcher finds on the complete answer, and a span, once returned,
never changes. Each call matches only the text after the last break the matcher reported
(`Settled.resume`), so following an answer costs about as much as matching it once.
"""

from __future__ import annotations

from collections.abc import Sequence

from bubogpt.grounding.matching.base import EntityMatcher
from bubogpt.grounding.schema import EntityMatch


class IncrementalMatcher:
    def __init__(self, matcher: EntityMatcher, labels: Sequence[str]):
        self.matcher = matcher
        self.labels = list(labels)
        self.resume = 0  # nothing before this offset can change any more
        self.sent: set[tuple[int, int, int]] = set()  # (start, end, entity_index)

    def settled(self, text: str) -> list[EntityMatch]:
        """Matches of `text` (an answer so far) that are final and new."""
        if not self.labels:
            return []
        settled = self.matcher.settled(text, self.labels, self.resume)
        self.resume = settled.resume
        out = []
        for match in settled.matches:
            key = (match.start, match.end, match.entity_index)
            if key not in self.sent:
                self.sent.add(key)
                out.append(match)
        return out

    def finish(self, text: str, matches: Sequence[EntityMatch] | None = None) -> list[EntityMatch]:
        """The complete answer's matches (`matches`, or the matcher's) not returned yet; those that
        overlap a span already returned are left out (a returned span never changes)."""
        matches = self.matcher.match(text, self.labels) if matches is None else matches
        taken = [(start, end) for start, end, _ in self.sent]
        out = []
        for match in matches:
            key = (match.start, match.end, match.entity_index)
            if key in self.sent or any(match.start < end and start < match.end for start, end in taken):
                continue
            self.sent.add(key)
            taken.append((match.start, match.end))
            out.append(match)
        return out
