"""ONNX Runtime thread settings in the python-backend models, interleaved: one `bubo serve` per setting, all
started at once, then rounds of the sweep (c=1, c=16; no grounding; fresh requests each round) against each in turn, so that the
machine's drift between minutes hits every setting alike; the baseline (demo) last.

    python benchmarks/results/ort-threads-20261203/interleaved.py OUT.json [ROUNDS]
"""
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.interleave import baseline_sweep, interleaved_rounds
from benchmarks.serve_process import ServeProcess
from bubogpt.defaults import default_model_dir
from serving.app import ServeOptions, ensure_repository

SWEEP = dict(concurrencies=[1, 16], per_client=4, min_requests=16, max_requests=64, time_cap_s=60, max_new_tokens=32)
VARIANTS = {  # every key explicit: the cached repository's own defaults do not leak into a variant
    "pool per core, spinning": {"intra_op_threads": 0, "allow_spinning": True},
    "pool per core, no spinning": {"intra_op_threads": 0, "allow_spinning": False},
    "one thread": {"intra_op_threads": 1, "allow_spinning": False},
}
TEMPLATE = Path(__file__).resolve().parents[3] / "model_repository" / "onnx_runtime" / "model.py"

rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
cache = Path.home() / ".cache" / "bubogpt"
repository = ensure_repository(default_model_dir(), ServeOptions(cache_dir=cache))
scratch = Path(tempfile.mkdtemp())
servers = {}
out = {"sweep": SWEEP, "variants": VARIANTS, "rounds": []}


def save(done):
    out["rounds"] = done
    Path(sys.argv[1]).write_text(json.dumps(out, indent=2))


try:
    for name, change in VARIANTS.items():
        copy = scratch / name.replace(" ", "-").replace(",", "")
        shutil.copytree(repository, copy)
        for settings_path in copy.glob("*/1/bubo.json"):
            if (settings_path.parent / "model.onnx").is_file():  # an ONNX Runtime model
                shutil.copy(TEMPLATE, settings_path.parent / "model.py")
                settings_path.write_text(json.dumps({**json.loads(settings_path.read_text()), **change}))
        servers[name] = ServeProcess(cache, scratch / f"{copy.name}.log", ["--model-repository", str(copy)]).start()
    time.sleep(5)  # let every stack's start-up work settle
    interleaved_rounds(servers, rounds, SWEEP, after_round=save)
finally:
    for server in servers.values():
        server.stop()
out["baseline"] = baseline_sweep(SWEEP)
save(out["rounds"])
shutil.rmtree(scratch, ignore_errors=True)
