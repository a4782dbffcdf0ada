"""Prometheus metrics of the frontend (served on --metrics-port as /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        # a registry per server: tests start several servers in one process
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("bubo_requests", "RPCs by method and final status code", ["method", "code"], registry=r)
        self.latency = Histogram("bubo_request_seconds", "RPC latency by method", ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("bubo_time_to_first_token_seconds", "request arrival to first token", buckets=LATENCY_BUCKETS, registry=r)
        self.grounding_tail = Histogram("bubo_grounding_tail_seconds", "last token to last mask", buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("bubo_tokens", "tokens processed", ["kind"], registry=r)
        self.cache = Counter("bubo_embedding_cache", "embedding cache lookups", ["modality", "result"], registry=r)
        self.active = Gauge("bubo_active_streams", "Chat streams in progress", registry=r)
        # supervision (serving/supervisor.py)
        self.part_up = Gauge("bubo_part_up", "1 while the part (triton, llm) is up, 0 while it is down", ["part"], registry=r)
        self.restarts = Counter("bubo_part_restarts", "restarts of a part by the frontend's supervisor", ["part"], registry=r)
        self.triton_calls = Gauge("bubo_triton_calls_in_flight",
                                  "Triton calls not answered yet, including those of requests that went away", registry=r)
        # the remote LLM tier (`--llm-url`): what crosses the network per request, by direction
        self.llm_wire_bytes = Counter("bubo_llm_tier_bytes", "bytes sent to / received from the LLM servers", ["direction"],
                                      registry=r)
        self.llm_requests = Counter("bubo_llm_tier_requests", "requests sent to the LLM servers, by server", ["server"], registry=r)

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
