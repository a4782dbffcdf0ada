"""Per-request records and the numbers a concurrency level is summarised into.

Every client (the gRPC load generator, the baseline's queue) fills the same `RequestRecord`s, so the
served stack and the baseline are measured by one definition of each metric:

* TTFT: request sent -> first delta carrying a token (client clock; includes queueing, encoding).
* ITL: gaps between consecutive token-carrying deltas of one request (delta arrival times).
* e2e latency: request sent -> Done received (or the stream ended).
* output tokens/s, requests/s: completed requests' tokens / the level's wall time (first send ->
  last completion).
* grounding tail: last token -> last entity (mask) event, for requests that got entity events
  (n/a when none came); done tail: last token -> Done, for every request (what the client waits
  after the answer: grounding, entity matching, or nothing).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class RequestRecord:
    index: int
    kind: str
    sent_s: float
    first_token_s: float | None = None
    done_s: float | None = None
    delta_times: list[float] = field(default_factory=list)  # arrival of each token-carrying delta
    delta_tokens: list[int] = field(default_factory=list)  # tokens in each of those deltas
    usage_prompt_tokens: int | None = None
    usage_completion_tokens: int | None = None
    entity_times: list[float] = field(default_factory=list)
    # per entity event, from the server's Done: (ms after its phrase's last token, sent before the answer ended)
    entity_latency: list[tuple[float, bool]] = field(default_factory=list)
    status: str = "OK"  # gRPC status code name
    error: str = ""
    finish_reason: str = ""
    server_timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "OK" and self.done_s is not None

    @property
    def tokens_from_deltas(self) -> int:
        return sum(self.delta_tokens)

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.sent_s

    @property
    def latency(self) -> float | None:
        return None if self.done_s is None else self.done_s - self.sent_s

    @property
    def itls(self) -> list[float]:
        t = self.delta_times
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def grounding_tail(self) -> float | None:
        if not self.entity_times or not self.delta_times:
            return None
        return max(self.entity_times) - self.delta_times[-1]

    @property
    def done_tail(self) -> float | None:
        if self.done_s is None or not self.delta_times:
            return None
        return self.done_s - self.delta_times[-1]

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(ttft=self.ttft, latency=self.latency, tokens_from_deltas=self.tokens_from_deltas,
                    grounding_tail=self.grounding_tail, done_tail=self.done_tail)
        return data


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1e3


def _phrase_to_mask(ok: list[RequestRecord]) -> dict | None:
    latencies = [ms for r in ok for ms, _ in r.entity_latency]
    if not latencies:
        return None
    early = sum(1 for r in ok for _, before in r.entity_latency if before)
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "entities": len(latencies),
            "before_answer_end": early, "before_answer_end_share": early / len(latencies)}


def summarize(records: list[RequestRecord], concurrency: int, wall_s: float | None = None) -> dict:
    """The level's metrics; times in milliseconds, rates per second, None where not measurable."""
    ok = [r for r in records if r.ok]
    if wall_s is None:
        starts = [r.sent_s for r in records]
        ends = [r.done_s for r in records if r.done_s is not None]
        wall_s = (max(ends) - min(starts)) if starts and ends else 0.0
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    latencies = [r.latency for r in ok]
    itls = [gap for r in ok for gap in r.itls]
    tails = [r.grounding_tail for r in ok if r.grounding_tail is not None]
    done_tails = [r.done_tail for r in ok if r.done_tail is not None]
    usage_tokens = sum(r.usage_completion_tokens or 0 for r in ok)
    delta_tokens = sum(r.tokens_from_deltas for r in ok)
    errors = Counter(r.status for r in records if not r.ok)
    return {
        "concurrency": concurrency,
        "requests": len(records),
        "completed": len(ok),
        "errors": dict(sorted(errors.items())),
        "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s if wall_s > 0 else None,
        "output_tokens": usage_tokens,
        "output_tokens_from_deltas": delta_tokens,
        "output_tokens_per_s": usage_tokens / wall_s if wall_s > 0 else None,
        "ttft_ms": {"p50": _ms(percentile(ttfts, 50)), "p99": _ms(percentile(ttfts, 99)), "mean": _ms(mean(ttfts))},
        "itl_ms": {"p50": _ms(percentile(itls, 50)), "p99": _ms(percentile(itls, 99)), "mean": _ms(mean(itls))},
        "latency_ms": {"p50": _ms(percentile(latencies, 50)), "p99": _ms(percentile(latencies, 99)),
                       "mean": _ms(mean(latencies))},
        "grounding_tail_ms": ({"p50": _ms(percentile(tails, 50)), "p99": _ms(percentile(tails, 99)),
                               "mean": _ms(mean(tails)), "requests": len(tails)} if tails else None),
        "done_tail_ms": {"p50": _ms(percentile(done_tails, 50)), "p99": _ms(percentile(done_tails, 99)),
                         "mean": _ms(mean(done_tails))},
        "entity_events": sum(len(r.entity_times) for r in ok),
        # phrase -> mask: how long after the token that completed a phrase its entity (mask) went out
        "phrase_to_mask_ms": _phrase_to_mask(ok),
        "server_timings_ms_mean": {
            key: mean([r.server_timings_ms[key] for r in ok if key in r.server_timings_ms])
            for key in sorted({k for r in ok for k in r.server_timings_ms})
        },
        "by_kind": {
            kind: {
                "completed": len(group),
                "ttft_ms_p50": _ms(percentile([r.ttft for r in group if r.ttft is not None], 50)),
                "latency_ms_p50": _ms(percentile([r.latency for r in group], 50)),
            }
            for kind in sorted({r.kind for r in ok})
            for group in [[r for r in ok if r.kind == kind]]
        },
    }


def fmt(value, digits: int = 1, unit: str = "") -> str:
    """Table text for a number that may be missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value:,.{digits}f}{unit}"
