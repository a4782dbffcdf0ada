"""`bubo serve`: Triton + the LLM engine + the gRPC frontend, started together and stopped together.

With no arguments it serves the built-in nano model on CPU. The Triton model repository for a model
directory is exported once and cached (keyed by the weights and the export code), so later starts
skip the export. Everything it starts listens on loopback unless told otherwise; a supervisor
(serving/supervisor.py) keeps Triton and the LLM engine running and the health service truthful.
SIGTERM drains: health goes NOT_SERVING, new requests get UNAVAILABLE, in-flight streams finish.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.triton import TritonPorts, TritonServer

log = logging.getLogger(__name__)

CODE_FILES = ("export", "model_repository", "bubogpt")


@dataclass
class ServeOptions:
    weights: Path | None = None
    preset: str | None = None
    port: int = 50051
    host: str = "127.0.0.1"
    http_port: int = 8080  # the OpenAI-compatible API and the web page (serving/http_api.py); 0: off
    device: str = "cpu"
    llm_engine: str = "vllm"
    metrics_port: int | None = 9090
    triton_ports: TritonPorts | None = None
    repository: Path | None = None
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "bubogpt")
    grounding: bool = True
    kv_cache_gib: float = 1.0
    vllm_executor: str | None = None  # None: vLLM's choice; "mp" or "uni" (serving/llm_engine.py VLLMEngine)
    max_concurrent_streams: int = 64
    # entity matching: "rule" (deterministic), "llm" (the served LLM with the paper's prompt, rule
    # fallback), "auto" (llm for bubogpt-7b, rule for the tiny model, which cannot follow it)
    matcher: str = "auto"
    # entities while the answer is written (rule matcher, phrase by phrase); `matcher` adds the rest at the end
    incremental_entities: bool = True
    # > 0: Triton polls the repository and loads new versions (`bubo export --update`) while serving
    repository_poll_s: int = 0
    # the address the Triton we start listens on (its gRPC, HTTP and metrics ports); loopback keeps the
    # encoders private to this frontend
    triton_host: str = "127.0.0.1"
    # security: TLS for the frontend (PEM files) and a shared token (`authorization: Bearer`)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    api_key: str | None = None
    # reliability: restart Triton / the LLM engine when they fail; seconds in-flight streams get on SIGTERM
    supervise: bool = True
    drain_grace_s: float = 30.0
    # tiers this frontend uses instead of starting them (issue 16): a running Triton's gRPC HOST:PORT,
    # running LLM servers' URLs (`bubo llm-server`, stock vLLM)
    triton_url: str | None = None
    llm_urls: tuple[str, ...] = ()


def free_port() -> int:
    """A free loopback port for a process started later to bind (Triton's ports, a test's frontend),
    chosen outside the kernel's ephemeral range: between now and then the kernel hands ports of that
    range to any process's outgoing connections and port-0 listeners (vLLM's sockets took a frontend's
    HTTP port that way in a CI run), never one below it."""
    import random

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    for _ in range(200) if low > 11000 else ():
        port = random.randrange(10000, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def repository_key(model_dir: Path, backend: str) -> str:
    """Hash of the weights, their configs and the code that exports them."""
    import importlib

    digest = hashlib.sha256(backend.encode())
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json"))
    for top in CODE_FILES:  # wherever they are installed (source tree or site-packages)
        package = Path(importlib.import_module(top).__path__[0])
        files += sorted(p for p in package.rglob("*.py") if "default_model" not in p.parts)
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def ensure_repository(model_dir: Path, options: ServeOptions) -> Path:
    """The Triton repository for `model_dir`: the one given, or an export cached under the cache dir."""
    from export.repository import export_model_dir

    if options.repository is not None:
        return options.repository
    backend = "tensorrt" if options.device == "cuda" else "onnx"
    key = repository_key(model_dir, backend + ("+grounding" if options.grounding else ""))
    out = options.cache_dir / "repositories" / f"{model_dir.name}-{key}"
    if (out / "bubo_repository.json").is_file():
        log.info("using the cached Triton repository %s", out)
        return out
    export_model_dir(model_dir, out, backend, grounding=options.grounding, overwrite=True)
    return out


class Stack:
    """Triton + LLM engine + gRPC frontend for one model directory; `start()`, then `stop()`."""

    def __init__(self, options: ServeOptions):
        self.options = options
        self.triton: TritonServer | None = None
        self.engine = None
        self.triton_client = None
        self.encoders = None
        self.service = None
        self.server = None
        self.supervisor = None
        self.http = None
        self.http_port: int | None = None
        self.parts: dict = {}
        self.hurry = asyncio.Event()  # set: stop without waiting for in-flight streams
        self.port: int | None = None
        self.startup_s: dict[str, float] = {}  # what the start took, part by part (the banner says it)

    async def start(self) -> "Stack":
        from bubogpt.weights import llm_dir, read_config
        from serving.encoders import TritonEncoders
        from serving.grounding_client import make_grounder
        from serving.llm_engine import VLLMEngine, create_engine
        from serving.prometheus import ServerMetrics
        from serving.remote_llm import RemoteLLMEngine
        from serving.server import BuboService, Limits, start_server
        from serving.supervisor import EngineWatch, Part, RemoteLLMWatch, RemoteTritonWatch, Supervisor, TritonWatch
        from serving.triton_client import TritonClient, check_repository, triton_part

        options = self.options
        if options.weights is None:
            from bubogpt.defaults import default_model_dir

            model_dir = default_model_dir()
        else:
            model_dir = Path(options.weights)
        self.config = cfg = read_config(model_dir)
        if options.preset and options.preset != cfg.name:
            raise SystemExit(f"{model_dir} holds a {cfg.name} model, not {options.preset}")
        tls = None
        if options.tls_cert or options.tls_key:
            if not (options.tls_cert and options.tls_key):
                raise SystemExit("TLS needs both --tls-cert and --tls-key")
            tls = (Path(options.tls_cert).read_bytes(), Path(options.tls_key).read_bytes())
        started = time.perf_counter()
        repository = None if options.triton_url else await asyncio.to_thread(ensure_repository, model_dir, options)
        self.startup_s = {"repository": time.perf_counter() - started}
        if options.llm_urls:
            self.engine = RemoteLLMEngine(llm_dir(model_dir), options.llm_urls, cfg.vision_qformer.num_queries)
        else:
            engine_kwargs = ({"kv_cache_gib": options.kv_cache_gib, "executor": options.vllm_executor}
                             if options.llm_engine == "vllm" else {})
            self.engine = create_engine(options.llm_engine, llm_dir(model_dir), cfg.vision_qformer.num_queries, **engine_kwargs)
        if isinstance(self.engine, VLLMEngine) and options.supervise:
            self.engine.restart_on_failure = False  # the supervisor restarts it, with backoff
        try:
            # Triton and the LLM engine start in parallel: both take seconds
            async def timed(name: str, work):
                begin = time.perf_counter()
                result = await work
                self.startup_s[name] = time.perf_counter() - begin
                return result

            self.parts = {"triton": triton_part(), "llm": Part("llm", "the LLM engine")}
            if options.triton_url:  # a Triton of its own operator: check it serves this model, start nothing
                self.triton_client = TritonClient(options.triton_url, part=self.parts["triton"])
                triton_start = check_repository(self.triton_client, cfg.vision_qformer.num_queries, self.engine.llm_cfg.hidden)
            else:
                triton_start = asyncio.to_thread(self._start_triton, repository)
            results = await asyncio.gather(timed("Triton", triton_start), timed("LLM engine", self.engine.start()))
            frontend_start = time.perf_counter()
            metrics = ServerMetrics()
            if isinstance(self.engine, RemoteLLMEngine):
                self.engine.metrics = metrics
            if options.triton_url:
                ensembles = results[0]
            else:
                self.triton_client = TritonClient(self.triton.url_grpc, part=self.parts["triton"])
                ensembles = tuple(name for name in ("image_embed", "audio_embed", "grounding") if (repository / name / "config.pbtxt").is_file())
            grounder = make_grounder(self.triton_client, ensembles) if options.grounding else None
            metrics.triton_calls.set_function(lambda: self.triton_client.in_flight if self.triton_client else 0)
            self.encoders = TritonEncoders(
                self.triton_client, version_check_s=float(options.repository_poll_s) if options.repository_poll_s else None
            )
            if options.metrics_port:
                metrics.serve(options.metrics_port, options.host)
            self.service = BuboService(self.encoders, self.engine, grounder=grounder, matcher=self._matcher(),
                                       limits=Limits(max_concurrent_streams=options.max_concurrent_streams), metrics=metrics,
                                       parts=self.parts, incremental_entities=options.incremental_entities)
            self.server = await start_server(self.service, options.port, options.host, tls=tls, api_key=options.api_key)
            self.port = self.server.bound_port
            if options.http_port:
                from serving.http_api import start_http
                from serving.llm_server import served_model_name

                self.http = await start_http(self.service, options.http_port, options.host, model_id=served_model_name(cfg.name),
                                             api_key=options.api_key, ssl_context=self._ssl_context())
                self.http_port = self.http.bound_port
            if options.supervise:
                if self.triton is not None:
                    watched = [TritonWatch(self.triton, self.parts["triton"], models=ensembles)]
                else:
                    watched = [RemoteTritonWatch(self.triton_client, self.parts["triton"], models=ensembles)]
                if isinstance(self.engine, VLLMEngine):
                    watched.append(EngineWatch(self.engine, self.parts["llm"]))
                elif isinstance(self.engine, RemoteLLMEngine):
                    watched.append(RemoteLLMWatch(self.engine, self.parts["llm"]))
                self.supervisor = Supervisor(watched, metrics=metrics, on_change=self.server.health.refresh)
                self.supervisor.start()
            self.startup_s["frontend"] = time.perf_counter() - frontend_start
            self.startup_s["total"] = time.perf_counter() - started
        except BaseException:
            await self.stop(grace_s=0)
            raise
        return self

    def _ssl_context(self):
        """TLS for the HTTP door too, with the gRPC door's certificate."""
        if not self.options.tls_cert:
            return None
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.options.tls_cert), str(self.options.tls_key))
        return context

    def _start_triton(self, repository: Path) -> None:
        """Starts Triton; with ports of our choosing, retries on fresh ones (another process may
        take a free port between our probe and Triton's bind)."""
        options = self.options
        attempts = 1 if options.triton_ports else 3
        for attempt in range(attempts):
            ports = options.triton_ports or TritonPorts(free_port(), free_port(), free_port())
            self.triton = TritonServer(repository, ports, log_path=options.cache_dir / "logs" / "triton.log",
                                       poll_secs=options.repository_poll_s, host=options.triton_host)
            try:
                self.triton.start(300.0)
                return
            except RuntimeError as exc:
                if attempt == attempts - 1:
                    raise
                log.warning("Triton failed to start (%s); retrying on other ports", str(exc).splitlines()[0])

    def _matcher(self):
        from bubogpt.grounding.matching import LLMEntityMatcher, RuleEntityMatcher
        from serving.llm_engine import engine_completion

        kind = self.options.matcher
        if kind == "auto":
            kind = "rule" if self.config.name == "nano" else "llm"
        if kind == "rule":
            return RuleEntityMatcher()
        if kind == "llm":
            return LLMEntityMatcher(engine_completion(self.engine), fallback=RuleEntityMatcher())
        raise ValueError(f"matcher must be auto, rule or llm, got {kind!r}")

    def banner(self) -> str:
        from serving.llm_server import served_model_name

        o, t = self.options, self.triton
        security = ("TLS" if o.tls_cert else "plaintext") + (", token required" if o.api_key else ", no token")
        return (
            f"BuboGPT ({self.config.name}) serving on {o.host}:{self.port} (gRPC bubo.v1.Bubo; {security})\n"
            + (f"  HTTP: {'https' if o.tls_cert else 'http'}://{o.host}:{self.http_port}/ (the web page), "
               f"/v1/chat/completions (OpenAI-compatible, model {served_model_name(self.config.name)})\n" if self.http else "")
            + (f"  Triton: gRPC {t.url_grpc}, HTTP {t.url_http}, metrics {t.host}:{t.ports.metrics}\n" if t else
               f"  Triton: {o.triton_url} (remote; not started here)\n")
            + (f"  LLM engine: {o.llm_engine}" if not o.llm_urls else
               f"  LLM: {', '.join(s.url for s in self.engine.servers)} (remote vLLM servers, least-loaded; not started here)")
            + (f"\n  metrics: http://{o.host}:{o.metrics_port}/metrics" if o.metrics_port else "")
            + ("\n  grounding: on" if self.service.grounder else "\n  grounding: off (no grounding models in the repository)")
            + (f"\n  supervision: {self._supervision()}" if self.supervisor else "")
            + self._startup_line()
        )

    def _supervision(self) -> str:
        started = [name for name, here in (("Triton", self.triton is not None), ("the LLM engine", not self.options.llm_urls)) if here]
        said = " and ".join(started) + (" are" if len(started) > 1 else " is") + " restarted when they fail" if started else ""
        remote = [name for name, there in (("Triton", self.triton is None), ("the LLM servers", bool(self.options.llm_urls))) if there]
        told = "health follows " + " and ".join(remote) if remote else ""
        return "; ".join(x for x in (said, told) if x)

    def _startup_line(self) -> str:
        times = self.startup_s
        if "total" not in times:
            return ""
        parts = ", ".join(f"{name} {times[name]:.1f} s" for name in ("repository", "Triton", "LLM engine", "frontend"))
        return f"\n  ready in {times['total']:.1f} s: {parts} (Triton and the LLM engine start in parallel)"

    async def stop(self, grace_s: float | None = None) -> None:
        """Drains the frontend (up to `grace_s`, default the options' drain grace), then stops the parts."""
        from serving.server import stop_server

        grace_s = self.options.drain_grace_s if grace_s is None else grace_s
        if self.server is not None:
            await stop_server(self.server, grace_s, self.hurry)  # drains both doors: they share the in-flight count
            self.server = None
        if self.http is not None:
            await self.http.cleanup()
            self.http = None
        if self.supervisor is not None:
            await self.supervisor.stop()  # before the parts stop: it would restart them
            self.supervisor = None
        if self.triton_client is not None:
            await self.triton_client.close()
            self.triton_client = None
            self.encoders = None
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None
        if self.triton is not None:
            await asyncio.to_thread(self.triton.stop)
            self.triton = None
        log.info("stopped")


async def serve(options: ServeOptions) -> None:
    """Runs the stack until SIGINT/SIGTERM, then drains in-flight streams and stops everything; a
    second signal cuts the drain short."""
    stop = asyncio.Event()
    signals = 0
    stack = Stack(options)

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        stop.set()
        if signals > 1:
            log.warning("second signal: stopping without waiting for in-flight streams")
            stack.hurry.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await stack.start()
    try:
        print(stack.banner(), flush=True)
        await stop.wait()
        log.info("shutting down: draining in-flight streams (up to %.0f s)", options.drain_grace_s)
    finally:
        await stack.stop()
