"""A tiny synthetic copy of every training set, in the official layouts, for the nano example configs.

    python -m training.tiny_data data/tiny
    bubo train stage1 --config training/configs/stage1_nano.toml
    bubo train stage2 --config training/configs/stage2_nano.toml

Pictures are gradients with coloured blocks, sounds are tone sweeps; captions use the nano
tokenizer's vocabulary. Layout (as the official dataset instructions describe):

    images/images-000000.tar ...        key.jpg + key.txt / key.json (CC3M/LAION style)
    wavcaps/sb_final.json, wavcaps/audio/<id>.flac
    cc_sbu_align/filter_cap.json, cc_sbu_align/image/<image_id>.jpg
    clotho/Clotho-detail-annotation.json, clotho/audio/<audio_id>.wav
    vggss/vggss-instruction-tuning.json, vggss/audio/<id>.wav, vggss/image/<id>.jpg
    llava/llava_instruct.json, llava/images/<image>
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

IMAGE_CAPTIONS = [
    "A red ball lies on the green grass next to a small white cat.",
    "A man is riding a bicycle on the road.",
    "There is a wooden table with a cup, a plate and an apple.",
    "The picture shows a circle, a square and a triangle in different colors.",
]
AUDIO_CAPTIONS = [
    "The audio is the sound of a bell ringing.",
    "A dog barking and birds singing.",
    "I hear music, speech, water and wind.",
    "A car horn in the street, then it stops.",
]


def image_bytes(seed: int, size: tuple[int, int] = (64, 48), fmt: str = "JPEG") -> bytes:
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x * (seed + 1) + y) % 256], -1).astype(np.uint8)
    for _ in range(3):
        x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
        array[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.integers(0, 256, size=3)
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def audio_bytes(seed: int, seconds: float = 1.0, sample_rate: int = 16000, fmt: str = "WAV") -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    signal = 0.4 * np.sin(2 * np.pi * (200 + 150 * seed + 200 * t) * t) + 0.05 * rng.standard_normal(t.shape)
    buffer = io.BytesIO()
    sf.write(buffer, signal.astype(np.float32), sample_rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_tiny_datasets(root: str | Path, count: int = 2) -> dict[str, Path]:
    root = Path(root)
    paths: dict[str, Path] = {}
    n = min(count, len(IMAGE_CAPTIONS))

    # image caption shards: one record with .txt, one with .json
    for shard in range(2):
        members = []
        for i in range(n):
            key = f"{shard:03d}{i:03d}"
            members.append((f"{key}.jpg", image_bytes(10 * shard + i)))
            caption = IMAGE_CAPTIONS[(shard + i) % len(IMAGE_CAPTIONS)]
            if i % 2 == 0:
                members.append((f"{key}.txt", caption.encode()))
            else:
                members.append((f"{key}.json", json.dumps({"caption": caption, "url": "http://example.invalid"}).encode()))
        write_tar(root / "images" / f"images-{shard:06d}.tar", members)
    paths["image_shards"] = root / "images" / "images-{000000..000001}.tar"

    # WavCaps (SoundBible style metadata, "audio": "wav_path" placeholder, flac files named by id)
    wavcaps = root / "wavcaps"
    (wavcaps / "audio").mkdir(parents=True, exist_ok=True)
    data = []
    for i in range(n):
        ident = f"{2219 + i}"
        (wavcaps / "audio" / f"{ident}.flac").write_bytes(audio_bytes(i, fmt="FLAC"))
        data.append({"title": f"sound {i}", "caption": AUDIO_CAPTIONS[i], "id": ident, "duration": 1.0, "audio": "wav_path",
                     "download_link": "http://example.invalid"})
    (wavcaps / "sb_final.json").write_text(json.dumps({"num_captions_per_audio": 1, "data": data}))
    paths["wavcaps"] = wavcaps

    # MiniGPT-4 aligned set (cc_sbu_align)
    align = root / "cc_sbu_align"
    (align / "image").mkdir(parents=True, exist_ok=True)
    annotations = []
    for i in range(n):
        (align / "image" / f"{i + 1}.jpg").write_bytes(image_bytes(100 + i))
        annotations.append({"image_id": str(i + 1), "caption": "The image shows " + IMAGE_CAPTIONS[i][0].lower() + IMAGE_CAPTIONS[i][1:]})
    (align / "filter_cap.json").write_text(json.dumps({"annotations": annotations}))
    paths["cc_sbu_align"] = align

    # Clotho-Detail
    clotho = root / "clotho"
    (clotho / "audio").mkdir(parents=True, exist_ok=True)
    annotations = []
    for i in range(n):
        audio_id = f"0029{i} harvest festival {i + 1}"
        (clotho / "audio" / f"{audio_id}.wav").write_bytes(audio_bytes(10 + i))
        annotations.append({"audio_id": audio_id, "caption": AUDIO_CAPTIONS[(i + 1) % len(AUDIO_CAPTIONS)]})
    (clotho / "Clotho-detail-annotation.json").write_text(json.dumps({"annotations": annotations}))
    paths["clotho"] = clotho

    # VGGSS instruction set (aligned audio + image)
    vggss = root / "vggss"
    (vggss / "audio").mkdir(parents=True, exist_ok=True)
    (vggss / "image").mkdir(parents=True, exist_ok=True)
    annotations = []
    for i in range(n):
        ident = f"007P6bFgRCU_00001{i}"
        (vggss / "audio" / f"{ident}.wav").write_bytes(audio_bytes(20 + i))
        (vggss / "image" / f"{ident}.jpg").write_bytes(image_bytes(200 + i))
        annotations.append({"audio_id": ident, "image_id": ident,
                            "caption": "The sound comes from the " + ["bell in the center.", "dog on the left."][i % 2]})
    (vggss / "vggss-instruction-tuning.json").write_text(json.dumps({"annotations": annotations}))
    paths["vggss"] = vggss

    # LLaVA-Instruct
    llava = root / "llava"
    (llava / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(max(1, n // 2)):
        name = f"{i + 33471:012d}.jpg"
        (llava / "images" / name).write_bytes(image_bytes(300 + i))
        records.append({"id": f"{i + 33471:012d}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhat is on the table?"},
            {"from": "gpt", "value": "There is a cup, a plate and an apple on the table."},
            {"from": "human", "value": "What color is the ball?"},
            {"from": "gpt", "value": "The ball is red."},
        ]})
    (llava / "llava_instruct.json").write_text(json.dumps(records))
    paths["llava"] = llava
    return paths


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "data/tiny"
    written = write_tiny_datasets(target)
    print("\n".join(f"{name}: {path}" for name, path in written.items()))
