"""Peak memory of the whole serving stack, sampled in a background thread.

The stack is a process tree: the frontend process (gRPC server, Triton launcher, vLLM's AsyncLLM
client), `tritonserver`, one `triton_python_backend_stub` per python-model instance, and vLLM's
EngineCore/worker processes. RAM = sum of the RSS of the root and all its descendants (shared
pages are counted once per process, so this over-counts a little; PSS, which splits shared pages,
is sampled too, less often, as it is slower to read). The sampler's own process and its children
are left out, so a load generator running inside the served process tree does not count itself.

GPU memory: per-process usage from NVML (pynvml) or `nvidia-smi`, summed over the same tree; when
neither is present but torch sees CUDA, the calling process's `torch.cuda.max_memory_reserved`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import psutil


def process_tree(root_pid: int, exclude_pid: int | None = None) -> list[psutil.Process]:
    """The root and its descendants, without `exclude_pid` and its descendants."""
    try:
        root = psutil.Process(root_pid)
        processes = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    if exclude_pid is not None:
        try:
            excluded = {exclude_pid} | {p.pid for p in psutil.Process(exclude_pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            excluded = {exclude_pid}
        processes = [p for p in processes if p.pid not in excluded]
    return processes


def tree_rss(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def tree_pss(processes: list[psutil.Process]) -> int | None:
    total = 0
    for process in processes:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        pss = getattr(info, "pss", None)
        if pss is None:
            return None
        total += pss
    return total


def gpu_memory_by_pid() -> dict[int, int] | None:
    """pid -> bytes of GPU memory, from NVML or nvidia-smi; None when no NVIDIA tooling is present."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        usage: dict[int, int] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                usage[proc.pid] = usage.get(proc.pid, 0) + int(proc.usedGpuMemory or 0)
        return usage
    except Exception:  # noqa: BLE001 - no pynvml, no driver, no permission: try the next source
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            return None
        usage = {}
        for line in out.stdout.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                usage[int(parts[0])] = usage.get(int(parts[0]), 0) + int(parts[1]) * 2**20
        return usage
    return None


def torch_gpu_reserved() -> int | None:
    torch = sys.modules.get("torch")  # never import torch just for this
    if torch is None:
        return None
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(sum(torch.cuda.max_memory_reserved(i) for i in range(torch.cuda.device_count())))
    except Exception:  # noqa: BLE001
        return None
    return None


class MemorySampler:
    """`with MemorySampler(pid) as m: ...; m.peak_rss` (bytes); `mark()` starts a new window."""

    def __init__(self, root_pid: int | None = None, interval_s: float = 0.2, pss_every: int = 10,
                 gpu_every: int = 10, exclude_self: bool = True):
        self.root_pid = root_pid or os.getpid()
        self.interval_s = interval_s
        self.pss_every = pss_every
        self.gpu_every = gpu_every
        self.exclude_pid = os.getpid() if exclude_self and self.root_pid != os.getpid() else None
        self.peak_rss = 0
        self.peak_pss: int | None = None
        self.peak_gpu: int | None = None
        self.gpu_source: str | None = None
        self.window_rss = 0
        self.window_pss: int | None = None
        self.window_gpu: int | None = None
        self.samples = 0
        self.processes_seen: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sample(self, full: bool = False) -> None:
        """One sample; PSS and GPU memory every `pss_every` / `gpu_every` samples, or now with `full`."""
        processes = process_tree(self.root_pid, self.exclude_pid)
        rss = tree_rss(processes)
        pss = tree_pss(processes) if full or self.samples % self.pss_every == 0 else None
        gpu = self._gpu(processes) if full or self.samples % self.gpu_every == 0 else None
        with self._lock:
            for process in processes:
                if process.pid not in self.processes_seen:
                    try:
                        self.processes_seen[process.pid] = process.name()
                    except psutil.Error:
                        pass
            self.samples += 1
            self.peak_rss = max(self.peak_rss, rss)
            self.window_rss = max(self.window_rss, rss)
            if pss is not None:
                self.peak_pss = max(self.peak_pss or 0, pss)
                self.window_pss = max(self.window_pss or 0, pss)
            if gpu is not None:
                self.peak_gpu = max(self.peak_gpu or 0, gpu)
                self.window_gpu = max(self.window_gpu or 0, gpu)

    def _gpu(self, processes: list[psutil.Process]) -> int | None:
        by_pid = gpu_memory_by_pid()
        if by_pid is not None:
            self.gpu_source = "nvml/nvidia-smi, summed over the process tree"
            pids = {p.pid for p in processes}
            return sum(v for pid, v in by_pid.items() if pid in pids)
        reserved = torch_gpu_reserved()
        if reserved is not None:
            self.gpu_source = "torch.cuda.max_memory_reserved (this process only)"
        return reserved

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a vanished process between listing and reading
                pass
            self._stop.wait(self.interval_s)

    def mark(self) -> dict:
        """The window's peaks since the last mark (bytes), then a new window starts."""
        self.sample(full=True)  # PSS/GPU on the window boundary too: short windows get one
        with self._lock:
            window = {"peak_rss_bytes": self.window_rss, "peak_pss_bytes": self.window_pss,
                      "peak_gpu_bytes": self.window_gpu}
            self.window_rss, self.window_pss, self.window_gpu = 0, None, None
        return window

    def start(self) -> "MemorySampler":
        self.sample()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "MemorySampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def summary(self) -> dict:
        names = sorted(set(self.processes_seen.values()))
        return {
            "root_pid": self.root_pid,
            "peak_rss_bytes": self.peak_rss,
            "peak_pss_bytes": self.peak_pss,
            "peak_gpu_bytes": self.peak_gpu,
            "gpu_source": self.gpu_source,
            "samples": self.samples,
            "process_names": names,
            "processes": len(self.processes_seen),
        }

