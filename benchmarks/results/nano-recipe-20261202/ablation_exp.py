"""Ablation experiment: reduced recipe, grounding from the committed default; prints the ablation metrics."""
import json, logging, sys, time, dataclasses
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
from training.nano.pipeline import Recipe, train_nano
out = sys.argv[1]
r = dataclasses.replace(Recipe(), vision_images=3000, vision_steps=1500, audio_sounds=1000, audio_steps=600,
                        eval_images=100, stage2_steps=int(sys.argv[2]) if len(sys.argv) > 2 else 500)
t = time.time()
rep = train_nano(out, r, progress=False, grounding_from="/work/main/bubogpt/default_model")
print("minutes", (time.time() - t) / 60)
print(json.dumps(rep["llm"], indent=1)[:1500])
keys = ("relation.accuracy", "negative.invented_link", "source.kind_accuracy", "source.answer_accuracy", "negative.image_correct", "negative.audio_kind_accuracy")
for label, m in rep["ablation"].items():
    print(label, {k: m.get(k) for k in keys})
print("eval", {k: rep["eval"].get(k) for k in ("caption.correct", "qa.accuracy", "relation.accuracy", "negative.invented_link", "source.localisation")})
