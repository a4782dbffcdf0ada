import importlib.util
import sys
import time

import torch
torch.set_num_threads(1)
# argv[1]: the module before the change (git show a800cb1:bubogpt/audio_features.py > old_af.py)
spec = importlib.util.spec_from_file_location("old_af", sys.argv[1])
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)
from bubogpt import audio_features as new
from bubogpt.samples import make_audio_bytes
from bubogpt.weights import read_config
from bubogpt.defaults import default_model_dir
cfg = read_config(default_model_dir()).audio
worst = 0.0
for seed, secs in ((1, 4.0), (2, 2.0), (3, 9.5), (4, 30.0), (5, 5.0)):
    d = make_audio_bytes(seconds=secs, seed=seed)
    a, b = old.audio_bytes_to_clips(d, cfg), new.audio_bytes_to_clips(d, cfg)
    worst = max(worst, (a - b).abs().max().item())
    print(secs, "max abs diff", (a - b).abs().max().item(), "equal", torch.equal(a, b))
def timeit(f, n=20):
    f(); t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-t)/n*1e3
d = make_audio_bytes(seconds=4.0, seed=3)
for r in range(2):
    print("old ms", timeit(lambda: old.audio_bytes_to_clips(d, cfg)), "new ms", timeit(lambda: new.audio_bytes_to_clips(d, cfg)))
