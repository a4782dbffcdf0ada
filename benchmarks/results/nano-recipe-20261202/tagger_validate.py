"""python validate.py OUT STEPS [presence_weight]: train_grounding (tagger only really) on train2k, score tags on seed-1000 eval."""
import io, sys, time, torch
torch.set_num_threads(1)
import logging; logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
from PIL import Image
import training.grounding.tagger as T
from training import grounding as G
from bubogpt.grounding.pipeline import load_grounding
from training.world.datasets import read_grounding
out, steps = sys.argv[1], int(sys.argv[2])
if len(sys.argv) > 3: T.PRESENCE_WEIGHT = float(sys.argv[3])
import training.grounding.driver as D
D.BUDGET_SHARES["tagger"] = 0.5  # room for the deadline: the steps are set here
t0 = time.time()
rep = G.train_grounding("/tmp/tagexp/train2k", out, seed=0, budget_minutes=32, progress=False, steps={"tagger": steps, "segmenter": 1, "detector": 1})
print("train", rep["tagger"]["steps"], "steps", round(rep["seconds"]["tagger"], 1), "s", "loss", rep["tagger"]["loss_first"], rep["tagger"]["loss_last"])
cal = rep["tagger"]["calibration"]; print("calibration", {k: v for k, v in cal.items() if k != "auc_per_tag"})
p = load_grounding(out)
ev = G.load_samples("/tmp/tagexp/eval", p, progress=False)
probs = G.tagger_probs(p.tagger, ev); y = G.tag_targets(ev, p.tag_list)
s = G.tag_scores(probs, y, p.thresholds, p.tag_list)
print("held-out seed 1000 (samples)", {k: v for k, v in s.items() if k != "auc_per_tag"}); print("per tag AUC", s["auc_per_tag"])
# the serving path: JPEG -> pipeline.tags
tp = fp = fn = 0
for data, scene in read_grounding("/tmp/tagexp/eval"):
    tags = set(p.tags(Image.open(io.BytesIO(data)).convert("RGB"))); truth = set(scene.tags)
    tp += len(tags & truth); fp += len(tags - truth); fn += len(truth - tags)
print("held-out seed 1000 (pipeline.tags)", G.precision_recall_f1(tp, fp, fn))
# other recall floors, same probabilities (thresholds from the calibration slice would need val probs: recompute)
import numpy as np
from training.world.scene import OBJECT_KINDS
rng = np.random.default_rng(0)
allS = G.load_samples("/tmp/tagexp/train2k", p, progress=False)
perm = rng.permutation(len(allS)); val = [allS[i] for i in sorted(perm[:round(len(allS) * 0.1)])]
vp = G.tagger_probs(p.tagger, val); vy = G.tag_targets(val, p.tag_list)
for floor in (None, 0.8, 0.9, 0.95):
    mr = {p.tag_list.index(k): floor for k in OBJECT_KINDS if floor} if floor else None
    th = G.calibrate_thresholds(vp, vy, min_recall=mr)
    r = G.tag_scores(probs, y, th, p.tag_list)
    print("floor", floor, {k: round(r[k], 3) for k in ("precision", "recall", "f1")})
print("total", round(time.time() - t0))
