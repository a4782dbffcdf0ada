"""Writes a synthetic corpus of the world: one counterpart of every training set of the paper, in the
formats the readers of `training.datasets` accept, plus grounding annotations, a text corpus and
evaluation items with exact truth.

    python -m training.world.datasets --out data/world --seed 0 --images 2000
    python -m training.world.datasets --out data/world_eval --seed 1 --images 200     # held out

Layout (`--images K` images in all, split among the image sets; 0.8 K sounds):

    world.json                                   manifest: seed, sizes, vocabulary, dataset paths
    images/world-000000.tar ...                  key.jpg + key.txt: image captions (CC3M/LAION style, stage 1)
    wavcaps/world_captions.json, audio/<id>.flac audio captions (WavCaps JSON: "audio": "wav_path", stage 1)
    cc_sbu_align/filter_cap.json, image/<id>.jpg detailed image descriptions (MiniGPT-4 aligned set)
    llava/llava_instruct.json, images/<id>.jpg   question/answer conversations (LLaVA-Instruct)
    clotho/Clotho-detail-annotation.json, audio/ detailed audio descriptions (Clotho-Detail)
    vggss/vggss-instruction-tuning.json, audio/, image/     related pairs: the sound's source is in the picture
    negatives/negatives.json, audio/, image/     unrelated pairs, VGGSS format ("They seem unrelated. ...")
    grounding/annotations.json                   every image: tags, objects (box, mask as COCO RLE), regions
    text/corpus.jsonl                            {"type", "text"}: the world's language, for the LLM
    eval/items.jsonl                             one evaluation item per record: inputs + truth (training.eval)
    configs/stage1_world.toml, stage2_world.toml training configs pointing at this corpus

Every record is a pure function of (seed, dataset, index), so the corpus is the same bytes for the same
arguments (also with --workers), and another seed gives other scenes (a held-out set).

Unlike the stock `negatives` kind (random image + random audio, which in this world would sometimes
pair a barking sound with a picture of a dog), the negative pairs here are unrelated by construction.
The records of `vggss/` and `negatives/` also carry an "instruction" field (ignored by the VGGSS
reader) naming the instruction the answer was written for.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from training.prompts import AUDIO, AUDIO_IMAGE, IMAGE, NEGATIVE
from training.world import derive_seed, language
from training.world.scene import BACKGROUNDS, COLORS, OBJECT_KINDS, REGION_LABELS, Scene, make_scene
from training.world.sound import SOUND_KINDS, SOUND_NAMES, SOURCE_SOUNDS, Sound, make_sound

VERSION = 1
SHARD_SIZE = 500


@dataclass
class CorpusSizes:
    captions: int  # image caption shards (stage 1)
    aligned: int  # MiniGPT-4 aligned: detailed image descriptions
    llava: int  # LLaVA conversations
    vggss: int  # related image + audio pairs
    negatives: int  # unrelated image + audio pairs
    audio_captions: int  # WavCaps
    clotho: int  # Clotho-Detail

    @classmethod
    def from_images(cls, images: int) -> CorpusSizes:
        """Splits `images` among the image sets (40/15/20/15/10 %) and adds 0.55 x as many audio-only clips."""
        if images < 5:
            raise ValueError(f"--images must be at least 5 (one per image set), got {images}")
        parts = {"captions": 0.4, "aligned": 0.15, "llava": 0.2, "vggss": 0.15}
        sizes = {name: max(1, round(images * share)) for name, share in parts.items()}
        sizes["negatives"] = max(1, images - sum(sizes.values()))
        return cls(**sizes, audio_captions=max(1, round(images * 0.4)), clotho=max(1, round(images * 0.15)))

    @property
    def images(self) -> int:
        return self.captions + self.aligned + self.llava + self.vggss + self.negatives

    @property
    def sounds(self) -> int:
        return self.audio_captions + self.clotho + self.vggss + self.negatives


DATASETS = ("captions", "aligned", "llava", "vggss", "negatives", "audio_captions", "clotho")


@dataclass
class Item:
    """Everything one record contributes: files, its annotation record, truth, texts."""

    dataset: str
    index: int
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (path relative to the corpus, bytes)
    record: dict[str, Any] | None = None  # goes into the dataset's annotation file
    grounding: dict[str, Any] | None = None  # goes into grounding/annotations.json
    texts: list[dict[str, str]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)


def _rng(seed: int, dataset: str, index: int, what: str) -> int:
    return derive_seed("world", VERSION, seed, dataset, index, what)


def _grounding_entry(scene: Scene, file: str, member: str | None = None) -> dict[str, Any]:
    entry = {"file": file}
    if member is not None:
        entry["member"] = member
    entry.update(scene.to_dict())
    return entry


def _scene_texts(scene: Scene, rng: random.Random) -> list[dict[str, str]]:
    texts = [{"type": "caption", "text": language.caption(scene, rng)}, {"type": "description", "text": language.description(scene, rng)}]
    for qa in language.questions(scene, rng, 3):
        texts.append({"type": "dialogue", "text": f"###Human: {qa.question}###Assistant: {qa.answer}###"})
    return texts


def _sound_texts(sound: Sound, rng: random.Random) -> list[dict[str, str]]:
    return [{"type": "audio_caption", "text": language.audio_caption(sound, rng)},
            {"type": "audio_description", "text": language.audio_description(sound, rng)}]


def _image_eval(item_id: str, task: str, image: Any, instruction: str, reference: str, scene: Scene, **truth) -> dict[str, Any]:
    return {"id": item_id, "task": task, "image": image, "audio": None, "instruction": instruction, "reference": reference,
            "truth": {"scene": scene.to_dict(), **truth}}


def make_item(seed: int, dataset: str, index: int) -> Item:
    """Record `index` of `dataset` (see DATASETS) of the corpus with this seed."""
    item = Item(dataset, index)
    rng = random.Random(_rng(seed, dataset, index, "text"))
    scene_seed = _rng(seed, dataset, index, "scene")
    sound_seed = _rng(seed, dataset, index, "sound")
    if dataset == "captions":
        scene = make_scene(scene_seed)
        key = f"{index:07d}"
        shard = f"images/world-{index // SHARD_SIZE:06d}.tar"
        text = language.caption(scene, rng)
        item.files = [(f"{shard}#{key}.jpg", scene.jpeg()), (f"{shard}#{key}.txt", text.encode())]
        item.grounding = _grounding_entry(scene, shard, f"{key}.jpg")
        item.texts = _scene_texts(scene, rng)
        item.evals = [_image_eval(f"captions/{key}", "caption", {"file": shard, "member": f"{key}.jpg"}, "", text, scene)]
    elif dataset == "aligned":
        scene = make_scene(scene_seed)
        image_id = str(index + 1)
        path = f"cc_sbu_align/image/{image_id}.jpg"
        text = language.description(scene, rng)
        item.files = [(path, scene.jpeg())]
        item.record = {"image_id": image_id, "caption": text}
        item.grounding = _grounding_entry(scene, path)
        item.texts = _scene_texts(scene, rng)
        item.evals = [_image_eval(f"aligned/{image_id}", "describe", path, rng.choice(IMAGE), text, scene)]
    elif dataset == "llava":
        scene = make_scene(scene_seed)
        ident = f"{index:012d}"
        path = f"llava/images/{ident}.jpg"
        qas = language.questions(scene, rng, rng.randint(2, 4))
        conversations: list[dict[str, str]] = []
        for i, qa in enumerate(qas):
            conversations.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + qa.question})
            conversations.append({"from": "gpt", "value": qa.answer})
        item.files = [(path, scene.jpeg())]
        item.record = {"id": ident, "image": f"{ident}.jpg", "conversations": conversations}
        item.grounding = _grounding_entry(scene, path)
        item.texts = _scene_texts(scene, rng) + [
            {"type": "dialogue", "text": "".join(f"###Human: {qa.question}###Assistant: {qa.answer}" for qa in qas) + "###"}]
        item.evals = [_image_eval(f"llava/{ident}#{i}", "qa", path, qa.question, qa.answer, scene, qa={"type": qa.type, "facts": qa.facts})
                      for i, qa in enumerate(qas)]
    elif dataset in ("vggss", "negatives"):
        ident = f"{'vggss' if dataset == 'vggss' else 'neg'}_{index:06d}"
        if dataset == "vggss":
            names = list(SOURCE_SOUNDS)
            kind = names[(index + derive_seed(seed, "vggss-offset")) % len(names)]
            sound = make_sound(sound_seed, kind)
            scene = make_scene(scene_seed, require=[kind], unique=[kind])
            instruction = rng.choice(AUDIO_IMAGE)
            answer = language.source_answer(scene, sound, rng)
            source = language.source_object(scene, sound)
            assert source is not None
            truth = {"related": True, "source": source.to_dict(scene.width, scene.height), "source_index": scene.objects.index(source)}
        else:
            sound = make_sound(sound_seed, SOUND_NAMES[int(rng.randrange(len(SOUND_NAMES)))])
            scene = make_scene(scene_seed, exclude=[sound.source] if sound.source else [])
            instruction = rng.choice(NEGATIVE)
            answer = language.unrelated_answer(scene, sound, rng)
            truth = {"related": False}
        audio_path, image_path = f"{dataset}/audio/{ident}.wav", f"{dataset}/image/{ident}.jpg"
        item.files = [(audio_path, sound.wav()), (image_path, scene.jpeg())]
        item.record = {"audio_id": ident, "image_id": ident, "caption": answer, "instruction": instruction}
        item.grounding = _grounding_entry(scene, image_path)
        item.texts = _scene_texts(scene, rng) + _sound_texts(sound, rng) + [
            {"type": "pair", "text": f"###Human: {instruction}###Assistant: {answer}###"},
            {"type": "pair", "text": f"###Human: {language.RELATED_QUESTION}###Assistant: {language.pair_answer(scene, sound, rng, yes=True)}###"},
        ]
        item.evals = [{"id": f"{dataset}/{ident}", "task": "source" if dataset == "vggss" else "negative", "image": image_path,
                       "audio": audio_path, "instruction": instruction, "reference": answer,
                       "truth": {"scene": scene.to_dict(), "sound": sound.to_dict(), **truth}}]
    elif dataset in ("audio_captions", "clotho"):
        kind = SOUND_NAMES[(index + derive_seed(seed, dataset, "offset")) % len(SOUND_NAMES)]
        sound = make_sound(sound_seed, kind)
        if dataset == "audio_captions":
            ident = f"world_{index:07d}"
            path = f"wavcaps/audio/{ident}.flac"
            text = language.audio_caption(sound, rng)
            item.files = [(path, sound.encode("FLAC"))]
            item.record = {"id": ident, "caption": text, "audio": "wav_path", "duration": round(sound.duration, 3),
                           "title": sound.kind, "description": language.audio_description(sound, rng)}
            task, instruction = "audio_caption", ""
        else:
            ident = f"clotho_{index:06d}"
            path = f"clotho/audio/{ident}.wav"
            text = language.audio_description(sound, rng)
            item.files = [(path, sound.wav())]
            item.record = {"audio_id": ident, "caption": text}
            task, instruction = "audio", rng.choice(AUDIO)
        item.texts = _sound_texts(sound, rng)
        item.evals = [{"id": f"{dataset}/{ident}", "task": task, "image": None, "audio": path, "instruction": instruction,
                       "reference": text, "truth": {"sound": sound.to_dict()}}]
    else:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    return item


def _make(job: tuple[int, str, int]) -> Item:
    return make_item(*job)


def jobs(seed: int, sizes: CorpusSizes) -> Iterator[tuple[int, str, int]]:
    for dataset in DATASETS:
        for index in range(getattr(sizes, dataset)):
            yield seed, dataset, index


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


ANNOTATION_FILES = {
    "aligned": ("cc_sbu_align/filter_cap.json", "annotations"),
    "llava": ("llava/llava_instruct.json", None),
    "vggss": ("vggss/vggss-instruction-tuning.json", "annotations"),
    "negatives": ("negatives/negatives.json", "annotations"),
    "audio_captions": ("wavcaps/world_captions.json", "data"),
    "clotho": ("clotho/Clotho-detail-annotation.json", "annotations"),
}


class _TarWriter:
    def __init__(self, root: Path):
        self.root = root
        self.path: str | None = None
        self.tar: tarfile.TarFile | None = None

    def add(self, shard: str, name: str, data: bytes) -> None:
        if shard != self.path:
            self.close()
            (self.root / shard).parent.mkdir(parents=True, exist_ok=True)
            self.tar = tarfile.open(self.root / shard, "w", format=tarfile.USTAR_FORMAT)
            self.path = shard
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        assert self.tar is not None
        self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
        self.tar, self.path = None, None


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


# What stage 1 and stage 2 on the world share; each stage fills in its own lines.
_CONFIG_HEAD = """# Stage {n} of the nano model on the synthetic world ({root}).
#   bubo train stage{n} --config {root}/configs/stage{n}_world.toml
{note}stage = "stage{n}"
base_model = "{base_model}"
output_dir = "runs/stage{n}_world"
seed = 42
log_every = 20
save_every = 200

[optim]
steps = 600
init_lr = {init_lr}
min_lr = 1e-4
warmup_lr = 1e-6
warmup_steps = 30
weight_decay = 0.05

[data]
batch_size = 8
shuffle_block = 500
feature_cache_items = 4096
"""


def _config_text(n: int, root: Path, *, base_model: str, init_lr: str, data: dict[str, Any],
                 datasets: list[dict[str, Any]], note: str = "") -> str:
    """A stage config: the shared head, the stage's [data] fields, one [[data.datasets]] table per set
    (name and kind first, ratio last)."""
    text = _CONFIG_HEAD.format(n=n, root=root, note=note, base_model=base_model, init_lr=init_lr)
    text += "".join(f"{key} = {_toml(value)}\n" for key, value in data.items())
    for dataset in datasets:
        fields = dict(dataset)
        ratio = fields.pop("ratio")
        text += "\n[[data.datasets]]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in fields.items())
        text += f"ratio = {ratio}\n"
    return text


def write_configs(root: Path, sizes: CorpusSizes) -> dict[str, Path]:
    """stage1/stage2 configs for the nano model on this corpus (absolute paths; steps sized for a CPU)."""
    r = root.resolve()
    shards = (sizes.captions - 1) // SHARD_SIZE
    shard_glob = f"{r}/images/world-{{000000..{shards:06d}}}.tar"
    stage1 = _config_text(1, r, base_model="", init_lr="1e-3", data={"max_answer_tokens": 128}, datasets=[
        {"name": "images", "kind": "caption_shards", "modality": "image", "shards": [shard_glob], "ratio": 1},
        {"name": "wavcaps", "kind": "wavcaps", "annotations": [f"{r}/wavcaps/world_captions.json"],
         "audio_dir": f"{r}/wavcaps/audio", "ratio": 1},
    ])
    stage2 = _config_text(
        2, r, base_model="runs/stage1_world/model", init_lr="3e-4",
        note='# The negatives are explicit unrelated pairs (kind "vggss" on negatives/), not random pairs.\n',
        data={"max_answer_tokens": 196, "system_prompt": "", "paired_order": ["image", "audio"]},
        datasets=[
            {"name": "cc_sbu_align", "kind": "minigpt4_aligned", "annotations": [f"{r}/cc_sbu_align/filter_cap.json"],
             "image_dir": f"{r}/cc_sbu_align/image", "ratio": 3},
            {"name": "llava", "kind": "llava", "annotations": [f"{r}/llava/llava_instruct.json"],
             "image_dir": f"{r}/llava/images", "ratio": 3},
            {"name": "clotho", "kind": "clotho_detail", "annotations": [f"{r}/clotho/Clotho-detail-annotation.json"],
             "audio_dir": f"{r}/clotho/audio", "ratio": 3},
            {"name": "vggss", "kind": "vggss", "annotations": [f"{r}/vggss/vggss-instruction-tuning.json"],
             "audio_dir": f"{r}/vggss/audio", "image_dir": f"{r}/vggss/image", "ratio": 3},
            {"name": "negatives", "kind": "vggss", "annotations": [f"{r}/negatives/negatives.json"],
             "audio_dir": f"{r}/negatives/audio", "image_dir": f"{r}/negatives/image", "ratio": 2},
        ])
    paths = {"stage1": root / "configs" / "stage1_world.toml", "stage2": root / "configs" / "stage2_world.toml"}
    paths["stage1"].parent.mkdir(parents=True, exist_ok=True)
    paths["stage1"].write_text(stage1)
    paths["stage2"].write_text(stage2)
    return paths


def dataset_paths(root: Path, sizes: CorpusSizes) -> dict[str, dict[str, Any]]:
    """Reader arguments (kind + paths) of every set, as training.datasets' readers take them."""
    shards = (sizes.captions - 1) // SHARD_SIZE
    return {
        "images": {"kind": "caption_shards", "shards": str(root / f"images/world-{{000000..{shards:06d}}}.tar"), "modality": "image"},
        "wavcaps": {"kind": "wavcaps", "annotations": str(root / "wavcaps/world_captions.json"), "audio_dir": str(root / "wavcaps/audio"), "audio_ext": ".flac"},
        "cc_sbu_align": {"kind": "minigpt4_aligned", "annotations": str(root / "cc_sbu_align/filter_cap.json"), "image_dir": str(root / "cc_sbu_align/image")},
        "llava": {"kind": "llava", "annotations": str(root / "llava/llava_instruct.json"), "image_dir": str(root / "llava/images")},
        "clotho": {"kind": "clotho_detail", "annotations": str(root / "clotho/Clotho-detail-annotation.json"), "audio_dir": str(root / "clotho/audio")},
        "vggss": {"kind": "vggss", "annotations": str(root / "vggss/vggss-instruction-tuning.json"), "audio_dir": str(root / "vggss/audio"),
                  "image_dir": str(root / "vggss/image")},
        "negatives": {"kind": "vggss", "annotations": str(root / "negatives/negatives.json"), "audio_dir": str(root / "negatives/audio"),
                      "image_dir": str(root / "negatives/image")},
    }


def write_corpus(out: str | Path, seed: int = 0, images: int = 2000, *, sizes: CorpusSizes | None = None, workers: int = 1,
                 progress: bool = False) -> dict[str, Any]:
    """Writes the corpus to `out` (created; existing files of the same names are replaced). Returns the manifest."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    sizes = sizes or CorpusSizes.from_images(images)
    total = sum(getattr(sizes, d) for d in DATASETS)
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in ANNOTATION_FILES}
    grounding: list[dict[str, Any]] = []
    tars = _TarWriter(root)
    counts = {"text": 0, "eval": 0, "bytes": 0}
    (root / "text").mkdir(parents=True, exist_ok=True)
    (root / "eval").mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="rec", desc="world corpus")
    pool = None
    try:
        if workers > 1:
            import multiprocessing

            pool = multiprocessing.get_context("spawn").Pool(workers)
            stream = pool.imap(_make, jobs(seed, sizes), chunksize=8)
        else:
            stream = map(_make, jobs(seed, sizes))
        with open(root / "text" / "corpus.jsonl", "w") as text_file, open(root / "eval" / "items.jsonl", "w") as eval_file:
            for item in stream:
                for path, data in item.files:
                    counts["bytes"] += len(data)
                    if "#" in path:
                        shard, name = path.split("#", 1)
                        tars.add(shard, name, data)
                    else:
                        (root / path).parent.mkdir(parents=True, exist_ok=True)
                        (root / path).write_bytes(data)
                if item.record is not None:
                    records[item.dataset].append(item.record)
                if item.grounding is not None:
                    grounding.append(item.grounding)
                for text in item.texts:
                    text_file.write(json.dumps(text, ensure_ascii=False) + "\n")
                for entry in item.evals:
                    eval_file.write(json.dumps(entry, ensure_ascii=False) + "\n")
                counts["text"] += len(item.texts)
                counts["eval"] += len(item.evals)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(item.dataset, refresh=False)
    finally:
        tars.close()
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    for dataset, (relative, list_key) in ANNOTATION_FILES.items():
        body: Any = records[dataset]
        if list_key == "data":
            body = {"num_captions_per_audio": 1, "data": body}
        elif list_key is not None:
            body = {list_key: body}
        _write_json(root / relative, body)
    _write_json(root / "grounding" / "annotations.json", {
        "info": {"description": "synthetic world grounding truth", "seed": seed,
                 "box": "xyxy pixels, x1/y1 exclusive; box_xyxy = whole object (amodal), visible_box_xyxy = tight box of mask",
                 "mask": "visible part after occlusion, compressed COCO RLE"},
        "tags": sorted(set(OBJECT_KINDS) | set(REGION_LABELS)),
        "images": grounding,
    })
    configs = write_configs(root, sizes)
    manifest = {
        "version": VERSION,
        "seed": seed,
        "sizes": asdict(sizes),
        "images": sizes.images,
        "sounds": sizes.sounds,
        "texts": counts["text"],
        "eval_items": counts["eval"],
        "media_bytes": counts["bytes"],
        "vocabulary": {"objects": list(OBJECT_KINDS), "colors": list(COLORS), "regions": list(REGION_LABELS),
                       "backgrounds": list(BACKGROUNDS), "sounds": {k: v.source for k, v in SOUND_KINDS.items()}},
        "datasets": dataset_paths(root, sizes),
        "configs": {k: str(v) for k, v in configs.items()},
    }
    _write_json(root / "world.json", manifest)
    return manifest


def read_grounding(root: str | Path) -> Iterator[tuple[bytes, Scene]]:
    """(JPEG bytes, scene truth without pixels) for every image of a written corpus."""
    root = Path(root)
    data = json.loads((root / "grounding" / "annotations.json").read_text())
    open_tars: dict[str, dict[str, bytes]] = {}
    for entry in data["images"]:
        if "member" in entry:
            if entry["file"] not in open_tars:
                with tarfile.open(root / entry["file"]) as tar:
                    open_tars = {entry["file"]: {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}}  # type: ignore[union-attr]
            image = open_tars[entry["file"]][entry["member"]]
        else:
            image = (root / entry["file"]).read_bytes()
        yield image, Scene.from_dict(entry)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.world.datasets", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed; another seed gives held-out scenes")
    parser.add_argument("--images", type=int, default=2000, help="images in all (0.8x as many sounds)")
    parser.add_argument("--workers", type=int, default=1, help="generator processes (output identical for any value)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    manifest = write_corpus(args.out, args.seed, args.images, workers=args.workers, progress=not args.no_progress)
    print(f"{args.out}: {manifest['images']} images, {manifest['sounds']} sounds, {manifest['texts']} texts, "
          f"{manifest['eval_items']} eval items, {manifest['media_bytes'] / 1e6:.1f} MB of media")
    print(f"train: bubo train stage1 --config {manifest['configs']['stage1']}")


if __name__ == "__main__":
    main()
