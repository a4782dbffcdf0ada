"""Runs Triton's perf_analyzer (installed by `bubo install-triton`) and parses its CSV report.

Example (what the tests run, against a server from `bubo triton`):

    python -m benchmarks.perf_analyzer --model image_embed --url 127.0.0.1:8001 --image cat.jpg \\
        --concurrency 1:8:1

Settings for noisy 2-core machines (shared/STACK.md): 4 s windows, 50 % stability, 6 trials.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.perf_inputs import write_input_data


def perf_analyzer_binary() -> tuple[Path, dict[str, str]]:
    from export.triton_install import triton_home

    root = triton_home()
    binary = root / "perf" / "bin" / "perf_analyzer"
    if not binary.is_file():
        raise FileNotFoundError(f"perf_analyzer not found at {binary}; run `bubo install-triton`")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(root / "perf" / "lib"), str(root / "libs"), env.get("LD_LIBRARY_PATH")) if p)
    return binary, env


def perf_analyzer_command(
    model: str,
    url: str,
    input_name: str,
    data_path: str | Path,
    report_path: str | Path,
    concurrency: str = "1",
    measurement_ms: int = 4000,
    stability: int = 50,
    max_trials: int = 6,
    binary: str | Path = "perf_analyzer",
    extra_args: list[str] | None = None,
) -> list[str]:
    """The perf_analyzer command line (also what the benchmark results and README quote)."""
    return [
        str(binary), "-m", model, "-u", url, "-i", "grpc",
        "--input-data", str(data_path), "--shape", f"{input_name}:1",
        "--concurrency-range", concurrency,
        "--measurement-interval", str(measurement_ms),
        "--stability-percentage", str(stability),
        "--max-trials", str(max_trials),
        "-f", str(report_path),
        *(extra_args or []),
    ]


def _float(row: dict, key: str) -> float:
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        return float("nan")


def run_perf_analyzer(
    model: str,
    url: str,
    input_name: str,
    payloads: list[bytes],
    concurrency: str = "1",
    measurement_ms: int = 4000,
    stability: int = 50,
    max_trials: int = 6,
    timeout: float = 600,
    extra_args: list[str] | None = None,
) -> list[dict[str, float]]:
    """Returns one row per concurrency level: concurrency, throughput (infer/s), latency percentiles (us).

    Rows also carry the server-side split perf_analyzer reports (queue, compute input/infer/output, us)."""
    binary, env = perf_analyzer_binary()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_input_data(Path(tmp) / "input.json", input_name, payloads)
        report = Path(tmp) / "report.csv"
        command = perf_analyzer_command(model, url, input_name, data, report, concurrency, measurement_ms, stability,
                                        max_trials, binary, extra_args)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
        with open(report) as handle:
            rows = list(csv.DictReader(handle))
    return [
        {
            "concurrency": float(row["Concurrency"]),
            "throughput": float(row["Inferences/Second"]),
            "p50_us": float(row["p50 latency"]),
            "p99_us": float(row["p99 latency"]),
            "avg_us": _float(row, "Avg latency"),
            "server_queue_us": _float(row, "Server Queue"),
            "server_compute_infer_us": _float(row, "Server Compute Infer"),
            "client_send_us": _float(row, "Client Send"),
            "client_recv_us": _float(row, "Client Recv"),
        }
        for row in rows
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="image_embed")
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--image", help="image file for image_embed")
    parser.add_argument("--audio", help="audio file for audio_embed")
    parser.add_argument("--concurrency", default="1:8:1")
    args = parser.parse_args(argv)
    name, path = ("AUDIO", args.audio) if args.audio else ("IMAGE", args.image)
    if not path:
        parser.error("give --image or --audio")
    for row in run_perf_analyzer(args.model, args.url, name, [Path(path).read_bytes()], args.concurrency):
        print(f"concurrency {row['concurrency']:.0f}: {row['throughput']:.1f} infer/s, p50 {row['p50_us'] / 1000:.1f} ms, p99 {row['p99_us'] / 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
