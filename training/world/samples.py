"""Sample pictures and sounds of the synthetic world for the web page (serving/web/samples/), from
held-out seeds: what a first-time user can try the built-in model on.

    python -m training.world.samples            # rewrites serving/web/samples/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from training.world import derive_seed
from training.world.scene import make_scene
from training.world.sound import make_sound

OUT = Path(__file__).resolve().parents[2] / "serving" / "web" / "samples"
SOUNDS = ("bird", "dog", "bell", "drum")


def write_samples(out: Path = OUT, images: int = 6) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"images": [], "sounds": []}
    for i in range(images):
        scene = make_scene(derive_seed("web-samples", "image", i))
        name = f"picture-{i}.jpg"
        (out / name).write_bytes(scene.jpeg())
        kinds = sorted({o.kind for o in scene.objects})
        manifest["images"].append({"file": name, "title": ", ".join(kinds)})
    for kind in SOUNDS:
        sound = make_sound(derive_seed("web-samples", "sound", kind), kind)
        name = f"sound-{kind}.flac"
        (out / name).write_bytes(sound.encode("FLAC"))
        manifest["sounds"].append({"file": name, "title": kind})
    (out / "samples.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


if __name__ == "__main__":
    print(json.dumps(write_samples(), indent=1))
    sys.exit(0)
