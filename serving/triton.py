"""Starts and stops Triton Inference Server for a model repository (`bubo triton`).

Uses a system `tritonserver` when one is on PATH (the official container, GPU hosts); otherwise the
binary that `bubo install-triton` (export/triton_install.py) unpacked from nvidia-pytriton's wheel.
The bundled binary needs its shared libraries and the running Python's libdir on LD_LIBRARY_PATH
(the python backend stub would otherwise load another libpython; see shared/STACK.md).
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from export.triton_install import triton_home

log = logging.getLogger(__name__)
_instances = itertools.count()


class TritonCrashed(RuntimeError):
    """Triton crashed (aborted, segfaulted) before it was ready."""


# signals a process raises on itself when it crashes; SIGTERM / SIGKILL come from outside (a shutdown,
# an operator, the OOM killer) and are not a reason to start Triton again
_CRASH_SIGNALS = {signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE}


@dataclass
class TritonPorts:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


class TritonServer:
    def __init__(
        self,
        model_repository: str | Path,
        ports: TritonPorts = TritonPorts(),
        log_path: str | Path | None = None,
        extra_args: list[str] | None = None,
        model_control_mode: str = "none",
        poll_secs: int = 0,
        host: str = "127.0.0.1",
    ):
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise FileNotFoundError(f"model repository {self.model_repository} does not exist (run `bubo export`)")
        self.ports = ports
        # "-": Triton writes to our own standard output (`bubo triton` in a container: the pod's log)
        self.log_to_stdout = log_path == "-"
        self.log_path = Path(log_path) if log_path and not self.log_to_stdout else None
        self.extra_args = extra_args or []
        # poll: new model versions written into the repository (`bubo export --update`) are loaded
        # while serving, without a restart
        self.model_control_mode = "poll" if poll_secs > 0 else model_control_mode
        self.poll_secs = poll_secs
        # Triton serves whoever can reach these addresses: loopback unless the operator says otherwise
        self.host = host
        # the python backend's shared-memory regions get a prefix of their own, so that what a killed
        # Triton leaves in /dev/shm can be removed without touching other servers' regions
        self.shm_prefix = f"bubo_triton_{os.getpid()}_{next(_instances)}_"
        self.process: subprocess.Popen | None = None
        self._log_handle = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        system = shutil.which("tritonserver")
        args = [
            f"--model-repository={self.model_repository}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            f"--grpc-address={self.host}",
            f"--http-address={self.host}",
            f"--metrics-address={self.host}",
            f"--model-control-mode={self.model_control_mode}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--log-verbose=0",
        ]
        if self.poll_secs > 0:
            args.append(f"--repository-poll-secs={self.poll_secs}")
        if system:
            return [system, *args, *self.extra_args], env
        root = triton_home()
        binary = root / "server" / "bin" / "tritonserver"
        if not binary.is_file():
            raise FileNotFoundError(
                f"no tritonserver on PATH and none bundled at {binary}; run `bubo install-triton`"
            )
        libdir = sysconfig.get_config_var("LIBDIR")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(root / "libs"), env.get("LD_LIBRARY_PATH")) if p)
        args += [
            f"--backend-directory={root / 'server' / 'backends'}",
            f"--cache-directory={root / 'server' / 'caches'}",
            "--allow-gpu-metrics=false",
        ]
        return [str(binary), *args, *self.extra_args], env

    def start(self, timeout: float = 180.0, crash_retries: int = 2) -> "TritonServer":
        """Starts Triton and waits until it is ready.

        A Triton that crashes while it loads (seen once in our CI: an abort in the python backend's
        shared-memory locking, boost::interprocess::lock_exception, triton-inference-server/server#8882,
        intermittent and open upstream) is started again, up to `crash_retries` times, with fresh
        shared-memory regions. A Triton that exits with an error code (a bad repository, a port in use)
        or is killed from outside (SIGTERM, SIGKILL) is not: that would fail the same way again.
        """
        for attempt in range(crash_retries + 1):
            try:
                return self._start_once(timeout)
            except TritonCrashed as exc:
                if attempt == crash_retries:
                    raise
                log.warning("Triton crashed during start-up (%s); starting it again (%d of %d)",
                            exc, attempt + 1, crash_retries)
                self.shm_prefix = f"bubo_triton_{os.getpid()}_{next(_instances)}_"
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> "TritonServer":
        command, env = self.command()
        log.info("starting Triton: %s", " ".join(command))
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_path, "ab")
        # own process group: stop() signals Triton and its python-backend stubs together
        self.process = subprocess.Popen(
            command, env=env, stdout=None if self.log_to_stdout else (self._log_handle or subprocess.DEVNULL), stderr=subprocess.STDOUT,
            start_new_session=True
        )
        try:
            self.wait_ready(timeout)
        except Exception:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def _connect_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "127.0.0.1", "") else self.host

    @property
    def url_http(self) -> str:
        return f"{self._connect_host}:{self.ports.http}"

    @property
    def url_grpc(self) -> str:
        return f"{self._connect_host}:{self.ports.grpc}"

    def is_ready(self, timeout: float = 2.0) -> bool:
        return self.readiness(timeout) == "ready"

    def readiness(self, timeout: float = 2.0, models: tuple[str, ...] = ()) -> str:
        """"ready", "not ready (...)" when Triton answers that it (or one of `models`) is not, or "no
        answer". With `models`, Triton itself need only be live and those models ready: while it
        loads new versions of other models (repository polling) Triton reports itself not ready,
        although every model keeps serving."""
        checks = [f"/v2/models/{name}/ready" for name in models] if models else ["/v2/health/ready"]
        if models:
            checks.insert(0, "/v2/health/live")
        for path in checks:
            try:
                with urllib.request.urlopen(f"http://{self.url_http}{path}", timeout=timeout) as response:
                    if response.status != 200:
                        return f"not ready ({path}: HTTP {response.status})"
            except urllib.error.HTTPError as exc:
                return f"not ready ({path}: HTTP {exc.code})"
            except (urllib.error.URLError, OSError):
                return "no answer"
        return "ready"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                code = self.process.returncode
                raise (TritonCrashed if -code in _CRASH_SIGNALS else RuntimeError)(
                    f"Triton exited with code {code} during start-up"
                    + (f"; see {self.log_path}; its last lines:\n{self.log_tail()}" if self.log_path else "")
                )
            if self.is_ready():
                log.info("Triton ready (gRPC %s, HTTP %s)", self.url_grpc, self.url_http)
                return
            time.sleep(0.25)
        raise TimeoutError(f"Triton was not ready within {timeout:.0f} s" + (f"; see {self.log_path}" if self.log_path else ""))

    def log_tail(self, lines: int = 25) -> str:
        if self._log_handle:
            self._log_handle.flush()
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except (OSError, AttributeError):
            return ""
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 30.0, kill: bool = False) -> None:
        """SIGTERM (graceful) or, with `kill`, SIGKILL to Triton and its python-backend stubs; then the
        shared-memory regions they leave behind are removed."""
        if self.process is None:
            return
        if self.process.poll() is None and not kill:
            try:
                os.killpg(self.process.pid, signal.SIGCONT)  # a stopped (hung) process cannot act on SIGTERM
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("Triton did not stop within %.0f s; killing it", timeout)
            except ProcessLookupError:
                pass
        # whatever is left of the group (Triton itself, or stubs that outlived it) goes now
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process = None
        if self._log_handle:
            self._log_handle.close()
            self._log_handle = None
        for path in glob.glob(f"/dev/shm/{self.shm_prefix}*"):
            try:
                os.unlink(path)
            except OSError:
                pass

    def restart(self, timeout: float = 300.0) -> "TritonServer":
        """A fresh Triton on the same ports and repository, after killing what is left of this one."""
        self.stop(kill=True)
        self.shm_prefix = f"bubo_triton_{os.getpid()}_{next(_instances)}_"
        return self.start(timeout)

    def __enter__(self) -> "TritonServer":
        # `with TritonServer(...).start(timeout) as t` must not start a second Triton on the same ports
        return self if self.process is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
