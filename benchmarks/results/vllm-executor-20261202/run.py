"""served stack: vLLM mp vs uni executor, same requests, c=1 and c=16"""
import json, sys, tempfile
from pathlib import Path
from benchmarks.serve_process import ServeProcess
from benchmarks.loadgen import run_sweep, level_line
out = {}
for name, extra in (("mp", ["--vllm-executor", "mp"]), ("uni", ["--vllm-executor", "uni"]), ("mp again", ["--vllm-executor", "mp"])):
    serve = ServeProcess(Path.home() / ".cache" / "bubogpt", Path(tempfile.mkdtemp()) / "serve.log", extra)
    import time; t = time.perf_counter(); serve.start(); start_s = time.perf_counter() - t
    try:
        r = run_sweep(serve.address, concurrencies=[1, 16], per_client=4, min_requests=16, max_requests=64, time_cap_s=60,
                      max_new_tokens=32, seed=0, ground="off", grounding_effect_requests=0, server_pid=serve.pid)
    finally:
        serve.stop()
    r["start_s"] = start_s
    out[name] = r
    for lv in r["levels"]:
        print(name, f"start {start_s:.0f}s", level_line(name, lv), flush=True)
Path(sys.argv[1]).write_text(json.dumps(out, indent=2))
