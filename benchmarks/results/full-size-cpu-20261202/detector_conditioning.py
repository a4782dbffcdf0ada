import torch, numpy as np
from bubogpt.grounding.pipeline import load_grounding
from export.specs import grounding_specs
from export.onnx_export import torch_outputs
p = load_grounding("/root/fs-work/model")
spec = [s for s in grounding_specs(p) if s.name == "detector"][0]
def compare(a, b, tag):
    wb, gb = a[1][0], b[1][0]
    d = np.abs(wb[:, None, :] - gb[None, :, :]).sum(-1)
    print(tag, "box rel", np.abs(wb-gb).max()/np.abs(wb).max(), "set-wise max min-dist", d.min(1).max(), "identity", (d.argmin(1)==np.arange(len(wb))).mean(), flush=True)
for seed in (1, 0):
    ex = spec.example(1, seed=seed)
    base = torch_outputs(spec, ex)
    ex2 = dict(ex); ex2["PIXELS"] = ex["PIXELS"] * (1 + 1e-6)
    compare(base, torch_outputs(spec, ex2), f"seed {seed} torch vs torch(pixels*(1+1e-6))")
    torch.set_num_threads(1)
    compare(base, torch_outputs(spec, ex), f"seed {seed} torch 2 threads vs 1 thread")
    torch.set_num_threads(2)
