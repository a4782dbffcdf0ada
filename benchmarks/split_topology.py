"""The tiers as separate processes on loopback, that know each other only by address (issue 16):
one `bubo triton`, N `bubo llm-server`s (stock vLLM), M `bubo serve --triton-url --llm-url` frontends.

`SplitTopology` starts and stops them (the split-topology tests drive it: answers, kills); the
benchmark (`python -m benchmarks.split_topology`) runs the same requests against it and against a
single-process `bubo serve`, side by side, and writes what the network hops cost.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from benchmarks.serve_process import ServeProcess
from serving.app import free_port

log = logging.getLogger(__name__)


class TierProcess:
    """One tier's server as a child process, ready when `ready_url` answers 200."""

    def __init__(self, name: str, command: list[str], ready_url: str, log_path: Path):
        self.name = name
        self.command = command
        self.ready_url = ready_url
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None

    def start(self) -> "TierProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.ready_url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} during start-up; its log:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} was not ready within {timeout_s:.0f} s; its log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.process.pid)
            return [root] + root.children(recursive=True)
        except (psutil.NoSuchProcess, AttributeError):
            return []

    def kill(self) -> None:
        """SIGKILL to the whole tree at once (a machine lost, not a shutdown)."""
        for process in self.tree():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            tree = self.tree()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
            for process in tree:  # what it left behind (vLLM's engine core, Triton's stubs)
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
            if self.process.poll() is None:
                self.process.wait()
        self._log.close()


def bubo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bubo_cli", *args]


class SplitTopology:
    """`bubo triton` + `llm_servers` x `bubo llm-server` + `frontends` x `bubo serve`, on free loopback ports."""

    def __init__(self, cache_dir: Path, log_dir: Path, llm_servers: int = 2, frontends: int = 2, weights: Path | None = None,
                 frontend_args: tuple[str, ...] = ()):
        self.cache_dir = Path(cache_dir)
        self.log_dir = Path(log_dir)
        self.weights = weights
        weights_args = ("--weights", str(weights)) if weights else ()
        self.triton_ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
        self.triton = TierProcess(
            "bubo triton",
            bubo_command("triton", "--model-repository", "{repository}", "--grpc-port", str(self.triton_ports["grpc"]),
                         "--http-port", str(self.triton_ports["http"]), "--metrics-port", str(self.triton_ports["metrics"])),
            f"http://127.0.0.1:{self.triton_ports['http']}/v2/health/ready", self.log_dir / "triton.log")
        self.llm_ports = [free_port() for _ in range(llm_servers)]
        self.llms = [TierProcess(f"bubo llm-server {i}", bubo_command("llm-server", "--port", str(port), *weights_args),
                                 f"http://127.0.0.1:{port}/health", self.log_dir / f"llm-{i}.log")
                     for i, port in enumerate(self.llm_ports)]
        tiers = ["--triton-url", f"127.0.0.1:{self.triton_ports['grpc']}"]
        for port in self.llm_ports:
            tiers += ["--llm-url", f"http://127.0.0.1:{port}"]
        self.frontends = [ServeProcess(self.cache_dir, self.log_dir / f"frontend-{i}.log", [*tiers, *weights_args, *frontend_args])
                          for i in range(frontends)]

    @property
    def addresses(self) -> str:
        """Every frontend, as one `--server` value (the client spreads calls over them)."""
        return ",".join(f.address for f in self.frontends)

    def repository(self) -> Path:
        from bubogpt.defaults import default_model_dir
        from serving.app import ServeOptions, ensure_repository

        return ensure_repository(Path(self.weights) if self.weights else default_model_dir(), ServeOptions(cache_dir=self.cache_dir))

    def start(self, timeout_s: float = 900.0) -> "SplitTopology":
        start = time.perf_counter()
        self.triton.command = [str(self.repository()) if a == "{repository}" else a for a in self.triton.command]
        try:
            for tier in (self.triton, *self.llms):
                tier.start()
            for tier in (self.triton, *self.llms):
                tier.wait_ready(timeout_s)
            # the frontends start in parallel (each imports torch and reads its tokenizer: seconds)
            failures: list[BaseException] = []

            def start_frontend(frontend: ServeProcess) -> None:
                try:
                    frontend.start(timeout_s)
                except BaseException as exc:  # noqa: BLE001 - raised below, in this thread
                    failures.append(exc)

            threads = [threading.Thread(target=start_frontend, args=(f,)) for f in self.frontends]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if failures:
                raise failures[0]
        except BaseException:
            self.stop()
            raise
        self.start_s = time.perf_counter() - start
        log.info("split topology ready in %.1f s: frontends %s", self.start_s, self.addresses)
        return self

    def stop(self) -> None:
        for frontend in self.frontends:
            if frontend.process is not None:
                frontend.stop(timeout_s=60)
        for tier in (*self.llms, self.triton):
            tier.stop()


# ---------------------------------------------------------------------------------------------
# The benchmark: `python -m benchmarks.split_topology` (or `bubo bench --suite split`)
# ---------------------------------------------------------------------------------------------

def _wire_bytes(frontends: list[ServeProcess]) -> dict[str, float]:
    """The frontends' count of bytes to and from the LLM tier, and of requests sent to it."""
    totals = {"sent": 0.0, "received": 0.0, "requests": 0.0}
    for frontend in frontends:
        try:
            text = frontend.metrics()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("bubo_llm_tier_bytes_total{"):
                direction = "sent" if 'direction="sent"' in line else "received"
                totals[direction] += float(line.rsplit(" ", 1)[1])
            elif line.startswith("bubo_llm_tier_requests_total{"):
                totals["requests"] += float(line.rsplit(" ", 1)[1])
    return totals


def run_configuration(name: str, start, stop, address, frontends, sweep: dict, log) -> dict:
    from benchmarks.loadgen import level_line, run_sweep

    log(f"{name}: starting")
    began = time.perf_counter()
    start()
    start_s = time.perf_counter() - began
    try:
        before = _wire_bytes(frontends())
        result = run_sweep(address(), log=log, **sweep)
        after = _wire_bytes(frontends())
    finally:
        stop()
    wire = {k: after[k] - before[k] for k in after}
    result["start_s"] = start_s
    result["llm_tier_wire"] = wire
    if wire["requests"]:
        result["llm_tier_bytes_per_request"] = {"sent": wire["sent"] / wire["requests"], "received": wire["received"] / wire["requests"]}
    for level in result["levels"]:
        log(level_line(name, level))
    return result


def measure_remote_routes(llm_url: str) -> dict:
    """What the remote tier's two request forms cost, on one LLM server: a chat about one image over
    three turns (whole-prompt embeddings; bytes per request, TTFT, prefix-cache positions reused) and
    the same chat without the image (token ids)."""
    import asyncio
    import json as json_module

    from bubogpt.defaults import default_model_dir
    from bubogpt.prompt import Turn
    from bubogpt.reference import ReferencePipeline
    from bubogpt.samples import make_image_bytes
    from bubogpt.weights import llm_dir
    from serving.llm_engine import ModalityEmbeds, SamplingOptions
    from serving.remote_llm import RemoteLLMEngine

    reference = ReferencePipeline.from_dir()
    image = ModalityEmbeds("image", reference.embed_image(make_image_bytes(seed=7)))

    async def run() -> dict:
        engine = RemoteLLMEngine(llm_dir(default_model_dir()), [llm_url])
        await engine.start()
        rows = {}
        try:
            for form, modalities in (("image chat (prompt_embeds)", [image]), ("text chat (token ids)", [])):
                # long enough that a turn's prompt fills whole KV blocks (128 positions on CPU): only full
                # blocks are cached, so a shorter chat would show no reuse whatever the route
                detail = " Describe every object, its colour, its size and where it is." * 8
                turns = [Turn("user", ("What is in the picture?" if modalities else "Tell me about dogs.") + detail)]
                turn_rows = []
                for turn in range(3):
                    sampling = SamplingOptions(max_new_tokens=24)
                    body = engine.request_body(engine.prepare(turns, modalities, sampling), sampling)
                    finished = None
                    async for event in engine.generate(turns, modalities, sampling):
                        finished = event
                    turn_rows.append({"turn": turn + 1, "bytes": len(json_module.dumps(body)), "prompt_positions": finished.prompt_tokens,
                                      "cached_positions": finished.cached_tokens,
                                      "ttft_ms": 1e3 * finished.timings["first_token_s"]})
                    turns = turns + [Turn("assistant", finished.text.strip() or "I see."), Turn("user", f"And what else ({turn})?")]
                rows[form] = turn_rows
        finally:
            await engine.stop()
        return rows

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import tempfile

    from benchmarks.report import machine_info, run_dir

    parser = argparse.ArgumentParser(prog="python -m benchmarks.split_topology", description=__doc__)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "bubogpt"))
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--time-cap", type=float, default=60.0)
    parser.add_argument("--max-requests", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="c=1,4, 16 requests a level")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    say = lambda m: print(m, flush=True)  # noqa: E731
    levels = [int(c) for c in ("1,4" if args.quick else args.concurrency).split(",")]
    sweep = dict(concurrencies=levels, per_client=4, min_requests=8, max_requests=16 if args.quick else args.max_requests,
                 time_cap_s=args.time_cap, max_new_tokens=args.max_new_tokens, seed=0, grounding_effect_requests=0)
    directory = run_dir(args.out, "split")
    logs = Path(tempfile.mkdtemp(prefix="split-bench-"))
    results: dict = {"machine": machine_info(), "settings": sweep, "configurations": {}}

    single = ServeProcess(Path(args.cache_dir), logs / "single.log")
    results["configurations"]["single process"] = run_configuration(
        "single process", lambda: single.start(), lambda: single.stop(), lambda: single.address, lambda: [single], sweep, say)
    for llms, fronts in ((1, 1), (2, 2)):
        name = f"split: {llms} LLM server{'s' if llms > 1 else ''}, {fronts} frontend{'s' if fronts > 1 else ''}"
        topology = SplitTopology(Path(args.cache_dir), logs / f"split-{llms}x{fronts}", llm_servers=llms, frontends=fronts)

        def stop(topology=topology, first=(llms == 1)) -> None:
            if first:  # the remote tier's request forms, measured on the one LLM server before it stops
                results["remote_routes"] = measure_remote_routes(f"http://127.0.0.1:{topology.llm_ports[0]}")
            topology.stop()

        results["configurations"][name] = run_configuration(
            name, topology.start, stop, lambda: topology.addresses, lambda: topology.frontends, sweep, say)
    (directory / "results.json").write_text(json.dumps(results, indent=2))
    (directory / "results.md").write_text(split_markdown(results))
    draw_split_charts(directory, results)
    say(split_markdown(results))
    say(f"results: {directory}")
    return 0


def draw_split_charts(directory: Path, results: dict) -> None:
    from benchmarks.plot import bar_chart

    configs = results["configurations"]
    levels = results["settings"]["concurrencies"]

    def series(getter):
        return {f"c={c}": [getter(next((lv for lv in r["levels"] if lv["concurrency"] == c), None)) for r in configs.values()]
                for c in levels}

    names = [n.replace("split: ", "split\n") for n in configs]
    bar_chart(directory / "requests_per_s.png", "requests/s: one process vs split tiers", names,
              series(lambda lv: lv and lv["requests_per_s"]), y_title="requests/s")
    bar_chart(directory / "ttft_p50.png", "TTFT p50: one process vs split tiers", names,
              series(lambda lv: lv and lv["ttft_ms"]["p50"]), y_title="ms")


def split_markdown(results: dict) -> str:
    configs = results["configurations"]
    levels = results["settings"]["concurrencies"]
    base = configs["single process"]
    lines = ["| configuration | start s | " + " | ".join(f"c={c} req/s | c={c} TTFT p50 / p99 ms" for c in levels)
             + " | LLM-tier bytes/request (sent / received) |",
             "|---|---|" + "---|---|" * len(levels) + "---|"]
    for name, result in configs.items():
        cells = [name, f"{result['start_s']:.0f}"]
        for c in levels:
            level = next((lv for lv in result["levels"] if lv["concurrency"] == c), None)
            ref = next((lv for lv in base["levels"] if lv["concurrency"] == c), None)
            if level is None:
                cells += ["n/a", "n/a"]
                continue
            ratio = (f" ({level['requests_per_s'] / ref['requests_per_s']:.2f}x)"
                     if ref and ref["requests_per_s"] and result is not base else "")
            cells += [f"{level['requests_per_s']:.2f}{ratio}", f"{level['ttft_ms']['p50']:.0f} / {level['ttft_ms']['p99']:.0f}"]
        per = result.get("llm_tier_bytes_per_request")
        cells.append(f"{per['sent'] / 1024:.1f} KiB / {per['received'] / 1024:.1f} KiB" if per else "0 (in process)")
        lines.append("| " + " | ".join(cells) + " |")
    routes = results.get("remote_routes")
    if routes:
        lines += ["", "| remote request form | turn | bytes sent | prompt positions | served from the prefix cache | TTFT ms |",
                  "|---|---|---|---|---|---|"]
        for form, rows in routes.items():
            for row in rows:
                lines.append(f"| {form} | {row['turn']} | {row['bytes'] / 1024:.1f} KiB | {row['prompt_positions']} | "
                             f"{row['cached_positions']} | {row['ttft_ms']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - the benchmark
    sys.exit(main())
