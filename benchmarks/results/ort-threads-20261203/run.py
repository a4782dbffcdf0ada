"""served stack with three ONNX Runtime thread settings in the python-backend encoders, same requests, c=1 and c=16,
then the baseline (demo) in the same run:

    python benchmarks/results/ort-threads-20261203/run.py OUT.json [VARIANT ...]

results.json: the order now, no spin, one, now. Caution: a variant whose dict leaves a key out gets the cached
repository's own value for it; interleaved.py sets every key.

now:      intra_op_threads 0 (one per core), pool threads spin between runs (ONNX Runtime's default)
no spin:  intra_op_threads 0, session.intra_op/inter_op.allow_spinning 0
one:      intra_op_threads 1 (no pool)
"""
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.baseline import run_baseline_sweep_async
from benchmarks.loadgen import level_line, run_sweep
from benchmarks.serve_process import ServeProcess
from bubogpt.defaults import default_model_dir
from serving.app import ServeOptions, ensure_repository

SWEEP = dict(concurrencies=[1, 16], per_client=4, min_requests=16, max_requests=64, time_cap_s=60, max_new_tokens=32, seed=0)
VARIANTS = {"now": {}, "no spin": {"allow_spinning": False}, "one": {"intra_op_threads": 1}}
TEMPLATE = Path(__file__).resolve().parents[3] / "model_repository" / "onnx_runtime" / "model.py"

cache = Path.home() / ".cache" / "bubogpt"
repository = ensure_repository(default_model_dir(), ServeOptions(cache_dir=cache))
scratch = Path(tempfile.mkdtemp())
copies = {}
for name, change in VARIANTS.items():
    copy = scratch / name.replace(" ", "-")
    shutil.copytree(repository, copy)
    for settings_path in copy.glob("*/1/bubo.json"):
        if (settings_path.parent / "model.onnx").is_file():  # an ONNX Runtime model
            shutil.copy(TEMPLATE, settings_path.parent / "model.py")
            settings = json.loads(settings_path.read_text())
            settings_path.write_text(json.dumps({**settings, **change}))
    copies[name] = copy

out = {"sweep": SWEEP, "runs": []}
for name in sys.argv[2:] or ("now", "no spin", "one", "now"):
    serve = ServeProcess(cache, scratch / f"serve-{len(out['runs'])}.log", ["--model-repository", str(copies[name])])
    t = time.perf_counter()
    serve.start()
    start_s = time.perf_counter() - t
    try:
        r = run_sweep(serve.address, ground="off", grounding_effect_requests=0, server_pid=serve.pid, **SWEEP)
    finally:
        serve.stop()
    out["runs"].append({"variant": name, "start_s": start_s, **r})
    for lv in r["levels"]:
        print(name, f"start {start_s:.0f}s", level_line(name, lv), flush=True)
    Path(sys.argv[1]).write_text(json.dumps(out, indent=2))

base = asyncio.run(run_baseline_sweep_async(concurrencies=SWEEP["concurrencies"], per_client=SWEEP["per_client"],
                                            min_requests=SWEEP["min_requests"], max_requests=SWEEP["max_requests"],
                                            time_cap_s=SWEEP["time_cap_s"], max_new_tokens=SWEEP["max_new_tokens"],
                                            seed=SWEEP["seed"], grounding_effect_requests=0))
out["baseline"] = base
for lv in base["levels"]:
    print("baseline", level_line("baseline", lv), flush=True)
Path(sys.argv[1]).write_text(json.dumps(out, indent=2))
shutil.rmtree(scratch, ignore_errors=True)
