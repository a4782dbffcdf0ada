"""Watches the parts the frontend depends on, tells the health service the truth, restarts what it
started.

A `Part` (Triton, the LLM engine) is up or down, with the reason. Requests `require()` a part before
they use it and wait on its work through `guard()`, which also returns as soon as the part goes
down, so no request waits on a dead or frozen part. The `Supervisor` probes every part twice a
second (process exit, a readiness check with a short timeout), marks it down, and restarts it with
backoff on the same ports and repository. Probes and restarts run off the event loop (threads), so
the frontend keeps answering health checks and other requests while a part restarts.

A crash (process exit, dead engine core) is restarted at once; a hang (readiness not answered, e.g.
SIGSTOP) marks the part down after `failures_to_down` probes and is restarted only when it lasts
`hang_restart_s`: a part that was only slow comes back by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from serving.errors import PartUnavailable

log = logging.getLogger(__name__)


class Part:
    """The state of one part, as requests see it."""

    def __init__(self, name: str, title: str):
        self.name = name  # short, for metrics and health ("triton", "llm")
        self.title = title  # for people ("Triton (encoders and grounding)")
        self.up = True
        self.reason = ""
        self.down_since: float | None = None
        self.restarts = 0
        self._waiters: set[asyncio.Future] = set()

    def unavailable(self) -> PartUnavailable:
        return PartUnavailable(self.name, f"{self.title} is unavailable: {self.reason}")

    def require(self) -> None:
        if not self.up:
            raise self.unavailable()

    def mark_down(self, reason: str) -> None:
        self.reason = reason
        if self.up:
            self.up, self.down_since = False, time.monotonic()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def mark_up(self) -> None:
        self.up, self.reason, self.down_since = True, "", None

    async def guard(self, work: asyncio.Future, timeout_s: float, what: str):
        """The result of detached `work`, or PartUnavailable when this part goes down first or
        `timeout_s` passes. `work` is never cancelled here: a caller that gives up (or is
        cancelled) only stops waiting, and the part finishes what it was given."""
        self.require()
        if work.done():
            return work.result()
        down = asyncio.get_running_loop().create_future()
        self._waiters.add(down)
        try:
            done, _ = await asyncio.wait((work, down), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiters.discard(down)
        if work in done:
            return work.result()
        if down in done:
            raise self.unavailable()
        raise PartUnavailable(self.name, f"{self.title} did not answer {what} within {timeout_s:.0f} s")


@dataclass
class Problem:
    reason: str
    fatal: bool  # the part is gone (process exited, engine core dead), not just slow


class Watched(Protocol):
    part: Part
    restartable: bool

    async def probe(self) -> Problem | None: ...

    async def restart(self) -> None: ...


class Supervisor:
    def __init__(
        self,
        watched: list[Watched],
        metrics=None,
        on_change: Callable[[], Awaitable[None]] | None = None,
        interval_s: float = 0.5,
        failures_to_down: int = 2,
        hang_restart_s: float = 30.0,
        backoff_s: tuple[float, float] = (1.0, 30.0),
        stable_s: float = 60.0,
    ):
        self.watched = watched
        self.metrics = metrics
        self.on_change = on_change
        self.interval_s = interval_s
        self.failures_to_down = failures_to_down
        self.hang_restart_s = hang_restart_s
        self.backoff_s = backoff_s
        self.stable_s = stable_s  # a part that ran this long since its last restart is restarted without delay
        self._tasks: list[asyncio.Task] = []
        self._restarts: set[asyncio.Task] = set()  # restarts in progress: stop() lets them finish

    @property
    def parts(self) -> dict[str, Part]:
        return {w.part.name: w.part for w in self.watched}

    @property
    def all_up(self) -> bool:
        return all(w.part.up for w in self.watched)

    def start(self) -> None:
        for w in self.watched:
            self._set_up_metric(w.part)
            self._tasks.append(asyncio.get_running_loop().create_task(self._watch(w), name=f"supervise-{w.part.name}"))

    async def stop(self, restart_timeout_s: float = 300.0) -> None:
        """Stops watching. A restart in progress is finished first (it runs in a thread that cannot be
        cancelled; abandoning it would leave a fresh Triton or engine behind, owned by nobody)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._restarts:
            log.info("waiting for %d restart(s) in progress before stopping", len(self._restarts))
            await asyncio.wait(set(self._restarts), timeout=restart_timeout_s)

    def _set_up_metric(self, part: Part) -> None:
        if self.metrics is not None:
            self.metrics.part_up.labels(part.name).set(1 if part.up else 0)

    async def _changed(self, part: Part) -> None:
        self._set_up_metric(part)
        if self.on_change is not None:
            try:
                await self.on_change()
            except Exception:  # noqa: BLE001 - a health update must not stop the watch
                log.exception("updating health failed")

    async def _pause(self, w: Watched) -> None:
        """The probe interval, cut short when the part signals a change (`wake`, e.g. its process exited)."""
        wake = getattr(w, "wake", None)
        if wake is None:
            await asyncio.sleep(self.interval_s)
            return
        try:
            await asyncio.wait_for(wake.wait(), self.interval_s)
        except TimeoutError:
            pass
        wake.clear()

    async def _watch(self, w: Watched) -> None:
        part = w.part
        failures = 0
        backoff = self.backoff_s[0]
        last_restart = float("-inf")
        while True:
            try:
                problem = await w.probe()
            except Exception as exc:  # noqa: BLE001 - a probe that fails is a failed probe
                problem = Problem(f"probe failed: {exc!r}", fatal=False)
            if problem is None:
                failures = 0
                if not part.up:
                    log.warning("%s is back after %.1f s", part.title, time.monotonic() - (part.down_since or time.monotonic()),
                                extra={"part": part.name})
                    part.mark_up()
                    await self._changed(part)
                await self._pause(w)
                continue
            failures += 1
            if part.up and (problem.fatal or failures >= self.failures_to_down):
                log.error("%s is down: %s", part.title, problem.reason, extra={"part": part.name})
                part.mark_down(problem.reason)
                await self._changed(part)
            hung = not part.up and time.monotonic() - (part.down_since or 0.0) >= self.hang_restart_s
            if not (w.restartable and not part.up and (problem.fatal or hung)):
                await self._pause(w)
                continue
            # restart; back off when the last restart did not hold for `stable_s`
            if time.monotonic() - last_restart < self.stable_s:
                log.warning("%s failed again %.0f s after its restart; next restart in %.0f s", part.title,
                            time.monotonic() - last_restart, backoff, extra={"part": part.name})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_s[1])
            else:
                backoff = self.backoff_s[0]
            cause = problem.reason if not hung else f"{problem.reason} for {self.hang_restart_s:.0f} s"
            part.mark_down(f"restarting after: {cause}")
            log.warning("restarting %s (%s)", part.title, cause, extra={"part": part.name})
            last_restart = time.monotonic()
            started = time.perf_counter()
            restart = asyncio.get_running_loop().create_task(w.restart(), name=f"restart-{part.name}")
            self._restarts.add(restart)
            restart.add_done_callback(self._restarts.discard)
            try:
                await asyncio.shield(restart)
            except Exception as exc:  # noqa: BLE001 - logged; the next round retries with backoff
                log.exception("restarting %s failed", part.title, extra={"part": part.name})
                part.mark_down(f"restart failed ({exc}); retrying")
                continue
            part.restarts += 1
            if self.metrics is not None:
                self.metrics.restarts.labels(part.name).inc()
            log.warning("%s restarted in %.1f s (restart %d)", part.title, time.perf_counter() - started, part.restarts,
                        extra={"part": part.name})
            failures = 0


def describe_exit(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class TritonWatch:
    """A Triton the frontend started (`serving.triton.TritonServer`): its process and its readiness.

    Probes run on a thread of their own (the loop's default executor can be busy with request work),
    and a thread blocked in waitpid() wakes the supervisor the moment the process exits."""

    restartable = True

    def __init__(self, server, part: Part, probe_timeout_s: float = 2.0, models: tuple[str, ...] = ()):
        import concurrent.futures

        self.server = server
        self.part = part
        self.models = models  # the models requests use (the ensembles); empty: Triton's own readiness
        self.probe_timeout_s = probe_timeout_s
        self.wake: asyncio.Event | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="triton-probe")
        self._waited: object = None

    def _watch_exit(self) -> None:
        """A daemon thread per Triton process, blocked until it exits."""
        import threading

        process = self.server.process
        if process is None or process is self._waited:
            return
        self._waited = process
        loop, wake = asyncio.get_running_loop(), self.wake

        def wait() -> None:
            process.wait()
            loop.call_soon_threadsafe(wake.set)

        threading.Thread(target=wait, name="triton-exit", daemon=True).start()

    async def probe(self) -> Problem | None:
        if self.wake is None:
            self.wake = asyncio.Event()
        process = self.server.process
        if process is None:
            return Problem("tritonserver is not running", fatal=True)
        self._watch_exit()
        code = process.poll()
        if code is not None:
            return Problem(f"tritonserver exited ({describe_exit(code)})", fatal=True)
        state = await asyncio.get_running_loop().run_in_executor(self._executor, self.server.readiness, self.probe_timeout_s,
                                                                 self.models)
        if state == "no answer":
            return Problem(f"tritonserver did not answer its readiness check within {self.probe_timeout_s:.0f} s", fatal=False)
        if state != "ready":
            return Problem(f"tritonserver is {state}", fatal=False)
        return None

    async def restart(self) -> None:
        await asyncio.to_thread(self.server.restart)


class EngineWatch:
    """The LLM engine (`serving.llm_engine.VLLMEngine`): its engine core process, restarted in place."""

    restartable = True

    def __init__(self, engine, part: Part):
        self.engine = engine
        self.part = part

    async def probe(self) -> Problem | None:
        problem = self.engine.problem()
        if problem is None:
            return None
        return Problem(problem, fatal=not self.engine.restarting)

    async def restart(self) -> None:
        await self.engine.restart()


class RemoteTritonWatch:
    """A Triton the frontend did not start (`--triton-url`): readiness only. Restarting it is its
    operator's job (Kubernetes), so this watch only says the truth about it."""

    restartable = False

    def __init__(self, client, part: Part, models: tuple[str, ...], probe_timeout_s: float = 2.0):
        self.client = client  # serving.triton_client.TritonClient
        self.part = part
        self.models = models
        self.probe_timeout_s = probe_timeout_s

    async def probe(self) -> Problem | None:
        client, timeout = self.client.client, self.probe_timeout_s
        try:
            # live + the models ready, as TritonWatch checks (triton.py readiness): a Triton that polls its
            # repository says "not ready" while it loads new versions, and still serves the old ones
            if not await client.is_server_live(client_timeout=timeout):
                return Problem(f"Triton at {self.client.url} is not live", fatal=False)
            for model in self.models:
                if not await client.is_model_ready(model, client_timeout=timeout):
                    return Problem(f"Triton at {self.client.url}: {model} is not ready", fatal=False)
        except Exception as exc:  # noqa: BLE001 - unreachable, timed out: all the same to health
            return Problem(f"Triton at {self.client.url} does not answer ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                           fatal=False)
        return None

    async def restart(self) -> None:  # pragma: no cover - restartable is False
        raise RuntimeError("a remote Triton is not restarted by the frontend")


class RemoteLLMWatch:
    """The remote LLM tier (`--llm-url`): probes each server's /health; down while none answers."""

    restartable = False

    def __init__(self, engine, part: Part):
        self.engine = engine  # serving.remote_llm.RemoteLLMEngine
        self.part = part

    async def probe(self) -> Problem | None:
        await self.engine.check_health()
        problem = self.engine.problem()
        return None if problem is None else Problem(problem, fatal=False)

    async def restart(self) -> None:  # pragma: no cover - restartable is False
        raise RuntimeError("a remote LLM server is not restarted by the frontend")
