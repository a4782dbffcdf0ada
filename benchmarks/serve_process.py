"""`bubo serve` as a child process, run the way a user runs it: free loopback ports, ready when its
health service says SERVING, stopped with SIGTERM. The soak and the reliability tests drive it, kill
its parts and read its process tree.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil

from serving.app import free_port

HEALTH_NAMES = ("", "bubo.v1.Bubo", "triton", "llm")


class ServeProcess:
    """`env`/`cwd`: the child's environment and working directory (default: this process's), e.g. to
    serve from an installed copy of the project instead of the source tree."""

    def __init__(self, cache_dir: Path, log_path: Path, extra_args: list[str] | tuple[str, ...] = (), env: dict | None = None,
                 cwd: Path | None = None):
        self.cache_dir = Path(cache_dir)
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args)
        self.env = env
        self.cwd = cwd
        self.port = free_port()
        self.metrics_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen | None = None
        self._channel = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bubo_cli", "serve", "--port", str(self.port), "--metrics-port", str(self.metrics_port),
                "--http-port", str(self.http_port), "--cache-dir", str(self.cache_dir), *self.extra_args]

    def start(self, timeout_s: float = 900.0) -> "ServeProcess":
        env = dict(os.environ if self.env is None else self.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), cwd=self.cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bubo serve exited with {self.process.returncode} during start-up; its log:\n{self.log_tail()}")
            if self.health("") == "SERVING":
                return self
            time.sleep(0.5)
        self.stop(signal.SIGKILL)
        raise TimeoutError(f"bubo serve was not SERVING within {timeout_s:.0f} s; its log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address, [("grpc.max_send_message_length", 64 << 20),
                                                                 ("grpc.max_receive_message_length", 64 << 20)])
        return self._channel

    def health(self, service: str = "", timeout_s: float = 1.0) -> str:
        """SERVING / NOT_SERVING / SERVICE_UNKNOWN, or NO_ANSWER (gRPC error or timeout)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            response = health_pb2_grpc.HealthStub(self.channel()).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return "NO_ANSWER"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_health(self, status: str = "SERVING", service: str = "", timeout_s: float = 300.0) -> float:
        """Seconds until `service` reports `status`; TimeoutError after `timeout_s`."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.health(service) == status:
                return time.monotonic() - start
            time.sleep(0.1)
        raise TimeoutError(f"health of {service!r} was not {status} within {timeout_s:.0f} s")

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def triton_pid(self) -> int | None:
        for process in self.tree():
            try:
                if process.name() == "tritonserver":
                    return process.pid
            except psutil.NoSuchProcess:
                continue
        return None

    def engine_core_pids(self) -> list[int]:
        pids = []
        for process in self.tree():
            try:
                if "EngineCore" in process.name() or "EngineCore" in " ".join(process.cmdline()):
                    pids.append(process.pid)
            except psutil.NoSuchProcess:
                continue
        return pids

    def resources(self) -> dict:
        """RSS and open file descriptors summed over the whole process tree, and its size."""
        rss = fds = count = 0
        for process in self.tree():
            try:
                rss += process.memory_info().rss
                fds += process.num_fds()
                count += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        # this server's Triton regions only (their prefix names the frontend's pid: serving/triton.py)
        prefix = f"bubo_triton_{self.pid}_"
        shm = len([p for p in os.listdir("/dev/shm") if p.startswith(prefix)]) if os.path.isdir("/dev/shm") else 0
        return {"rss_bytes": rss, "open_fds": fds, "processes": count, "triton_shm_regions": shm}

    def listening(self) -> list[tuple[int, str, int, str]]:
        """(pid, address, port, process name) of every listening TCP socket of the tree."""
        out = []
        for process in self.tree():
            try:
                for conn in process.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        out.append((process.pid, conn.laddr.ip, conn.laddr.port, process.name()))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 120.0) -> int | None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                for process in reversed(self.tree()):
                    try:
                        process.kill()
                    except psutil.NoSuchProcess:
                        pass
                self.process.wait()
        self._log.close()
        return self.process.returncode
