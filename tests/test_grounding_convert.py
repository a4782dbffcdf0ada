"""`bubo convert --sam --groundingdino --bert --ram`: the official grounding files (synthesized with the
official key names and shapes at the tiny presets) -> a model directory's grounding/ -> served.

The expected landing place of every official key comes from the family tests' own oracles (written
from the official module definitions, not from the loaders' key maps).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bubogpt.convert import GroundingFiles, build_grounding_from_official, convert_grounding
from bubogpt.defaults import write_random_model
from bubogpt.grounding import ram, sam
from bubogpt.grounding.grounding_dino import GDINO_PRESETS
from bubogpt.grounding.pipeline import load_grounding
from bubogpt.official_checkpoints import CheckpointError
from test_grounding_dino import NOT_LOADED, is_alias, our_name, released_checkpoint, write_text_encoder_dir
from test_ram import is_ignored_official, official_state_dict
from test_sam import expected_target, synthetic_official_state

# RAM's BERT names inside `tagging_head.encoder.layer.{i}.` -> ours inside `tagging_head.layers.{i}.`,
# written out from bert.py's BertLayer (crossattention = BertAttention(is_cross_attention=True)).
RAM_HEAD_RENAMES = {
    "crossattention.self.query": "cross_attn.q_proj",
    "crossattention.self.key": "cross_attn.k_proj",
    "crossattention.self.value": "cross_attn.v_proj",
    "crossattention.output.dense": "cross_attn.out_proj",
    "crossattention.output.LayerNorm": "cross_attn.norm",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "mlp.norm",
}


def ram_target(key: str) -> str | None:
    if is_ignored_official(key):
        return None
    m = re.fullmatch(r"tagging_head\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", key)
    if m:
        return f"tagging_head.layers.{m[1]}.{RAM_HEAD_RENAMES[m[2]]}.{m[3]}"
    return key  # visual_encoder, image_proj, label_embed, wordvec_proj, fc keep the official names


def write_official_grounding_files(root: Path) -> tuple[GroundingFiles, dict]:
    """Files as the official releases lay them out, at the tiny presets; returns (files, their states)."""
    root.mkdir(parents=True, exist_ok=True)
    bert = write_text_encoder_dir(root / "bert-base-uncased", GDINO_PRESETS["tiny"].text)
    (bert / "pytorch_model.bin").write_bytes(b"BERT weights: the detector's come from its own checkpoint")
    detector_cfg = GDINO_PRESETS["tiny"].with_text_encoder_dir(bert)
    states = {
        "sam": synthetic_official_state(sam.SAM_PRESETS["tiny"], seed=3),  # flat, as sam_vit_h_4b8939.pth
        "groundingdino": released_checkpoint(detector_cfg, seed=4),  # {"model": ...} with label_enc.weight
        "ram": {"model": official_state_dict(ram.RAM_PRESETS["tiny"], seed=5), "epoch": 3},
    }
    for name, state in states.items():
        torch.save(state, root / f"{name}.pth")
    tags = list(ram.TINY_TAG_LIST)
    (root / "ram_tag_list.txt").write_text("\n".join(tags) + "\n")
    thresholds = [round(0.6 + 0.01 * i, 2) for i in range(len(tags) - 2)]  # RAM's rule: the rest keep 0.68
    (root / "ram_tag_list_threshold.txt").write_text("\n".join(map(str, thresholds)) + "\n")
    files = GroundingFiles(
        sam=root / "sam.pth", groundingdino=root / "groundingdino.pth", bert=bert, ram=root / "ram.pth",
        ram_tag_list=root / "ram_tag_list.txt", ram_thresholds=root / "ram_tag_list_threshold.txt",
    )
    return files, {**states, "thresholds": thresholds + [0.68, 0.68], "tags": tags}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return write_official_grounding_files(tmp_path_factory.mktemp("official_grounding"))


@pytest.fixture()
def model_dir(tmp_path):
    """A model directory as `bubo init --preset nano` makes it (with its random tiny grounding)."""
    return write_random_model(tmp_path / "model", preset="nano")


def assert_holds_the_official_tensors(pipeline, states) -> None:
    """Every official tensor equals the one of ours it maps to, and every tensor of ours was filled."""
    networks = {
        "tagger": pipeline.tagger.state_dict(),
        "detector": pipeline.detector.state_dict(),
        "encoder": pipeline.segmenter_encoder.state_dict(),
        "decoder": pipeline.segmenter_decoder.state_dict(),
    }
    filled: dict[str, set[str]] = {name: set() for name in networks}

    def check(network: str, ours: str, official: str, value: torch.Tensor) -> None:
        assert ours in networks[network], f"{official} -> {network}.{ours}: no such tensor"
        assert torch.equal(networks[network][ours], value), f"{official} -> {network}.{ours} differs"
        filled[network].add(ours)

    for key, value in states["sam"].items():
        if (target := expected_target(key)) is not None:
            check(*target, key, value)
    for key, value in states["groundingdino"]["model"].items():
        if not is_alias(key) and key != "label_enc.weight" and not any(part in key for part in NOT_LOADED):
            check("detector", our_name(key), key, value)
    for key, value in states["ram"]["model"].items():
        if (target := ram_target(key)) is not None:
            check("tagger", target, key, value)
    for network, state in networks.items():
        assert filled[network] == set(state), f"{network}: not from the files: {sorted(set(state) - filled[network])}"


def test_grounding_alone_into_an_existing_model_directory(official, model_dir):
    files, states = official
    written = convert_grounding(model_dir, files)  # nano -> the tiny grounding preset
    assert written == model_dir / "grounding"
    pipeline = load_grounding(model_dir)  # what `bubo serve --weights` / `bubo export` load
    assert_holds_the_official_tensors(pipeline, states)
    assert pipeline.tag_list == states["tags"]
    assert torch.equal(pipeline.thresholds, torch.tensor(states["thresholds"], dtype=torch.float32))
    # the detector's BERT config and vocab, not the BERT weights
    text = written / "text_encoder"
    assert sorted(p.name for p in text.iterdir()) == ["config.json", "vocab.txt"]
    for name in ("config.json", "vocab.txt"):
        assert (text / name).read_bytes() == (Path(files.bert) / name).read_bytes()
    manifest = json.loads((written / "grounding.json").read_text())
    assert manifest["provenance"]["files"]["sam"] == str(Path(files.sam).resolve())
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".grounding")]
    # and the networks run: tags, boxes for a caption, a mask per box
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    assert isinstance(pipeline.tags(image), list)
    assert isinstance(pipeline.detect(image, "dog,cat."), list)
    masks = pipeline.segment(image, np.array([[10, 10, 60, 50], [0, 0, 128, 96]], dtype=np.float32))
    assert masks.shape == (2, 96, 128) and masks.dtype == bool
    pipeline(image)


@pytest.mark.parametrize(
    "family, corrupt, named",
    [
        ("ram", lambda s: s["model"].pop("tagging_head.encoder.layer.1.output.dense.weight"),
         "1 missing, 0 unexpected, 0 mis-shaped, 0 inconsistent. missing (our tensors the file does not fill): "
         "tagging_head.layers.1.mlp.fc2.weight <- official key 'tagging_head.encoder.layer.1.output.dense.weight'"),
        ("sam", lambda s: s.__setitem__("mask_decoder.extra_head.weight", torch.zeros(2)),
         "unexpected (file keys neither mapped nor in the ignore list): mask_decoder.extra_head.weight"),
        ("groundingdino", lambda s: s["model"].__setitem__("feat_map.weight", torch.zeros(3, 3)),
         "feat_map.weight -> feat_map.weight: checkpoint (3, 3) vs model (32, 32)"),
        ("groundingdino", lambda s: s["model"].__setitem__("label_enc.weight", torch.zeros(3)), None),  # skipped by name
    ],
    ids=["ram-missing", "sam-unexpected", "detector-misshaped", "label_enc-any-shape"],
)  # fmt: skip
def test_bad_files_fail_naming_the_tensor_and_write_nothing(official, model_dir, tmp_path, family, corrupt, named):
    files, states = official
    state = {k: (dict(v) if isinstance(v, dict) else v) for k, v in states[family].items()}
    corrupt(state)
    torch.save(state, tmp_path / f"{family}.pth")
    broken = GroundingFiles(**{**files.__dict__, family: tmp_path / f"{family}.pth"})
    if named is None:
        convert_grounding(model_dir, broken)
        return
    before = (model_dir / "grounding" / "grounding.json").read_bytes()
    with pytest.raises(CheckpointError) as err:
        convert_grounding(model_dir, broken)
    assert named in str(err.value) and "\n" not in str(err.value)
    assert (model_dir / "grounding" / "grounding.json").read_bytes() == before


def test_ram_vocabulary_files(official, tmp_path):
    files, _ = official
    with pytest.raises(CheckpointError, match="not in the RAM checkpoint"):
        build_grounding_from_official("official", GroundingFiles(**{**files.__dict__, "ram_tag_list": None, "ram_thresholds": None}))
    with pytest.raises(CheckpointError, match="give both files or neither"):
        build_grounding_from_official("tiny", GroundingFiles(**{**files.__dict__, "ram_thresholds": None}))
    # the tiny preset brings its own vocabulary
    pipeline = build_grounding_from_official("tiny", GroundingFiles(**{**files.__dict__, "ram_tag_list": None, "ram_thresholds": None}))
    assert pipeline.tag_list == list(ram.TINY_TAG_LIST)
    too_many = tmp_path / "thresholds.txt"
    too_many.write_text("0.5\n" * (len(ram.TINY_TAG_LIST) + 1))
    with pytest.raises(CheckpointError, match=f"{len(ram.TINY_TAG_LIST) + 1} thresholds for {len(ram.TINY_TAG_LIST)} tags"):
        build_grounding_from_official("tiny", GroundingFiles(**{**files.__dict__, "ram_thresholds": too_many}))
    # a tag list longer than the checkpoint's label embeddings: the mis-shaped tensor is named
    longer = tmp_path / "tags.txt"
    longer.write_text("\n".join(list(ram.TINY_TAG_LIST) + ["zebra"]) + "\n")
    with pytest.raises(CheckpointError, match=r"label_embed -> label_embed: checkpoint \(24, 32\) vs model \(25, 32\)"):
        build_grounding_from_official("tiny", GroundingFiles(**{**files.__dict__, "ram_tag_list": longer}))


def test_cli_converts_then_grounds_and_errors_are_one_line(official, model_dir, tmp_path):
    files, states = official

    def bubo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bubo_cli", *args], capture_output=True, text=True, timeout=300)

    flags = ["--sam", str(files.sam), "--groundingdino", str(files.groundingdino), "--bert", str(files.bert),
             "--ram", str(files.ram), "--ram-tag-list", str(files.ram_tag_list),
             "--ram-thresholds", str(files.ram_thresholds)]
    done = bubo("convert", *flags, "--out", str(model_dir))
    assert done.returncode == 0, done.stderr
    image = tmp_path / "image.png"
    Image.fromarray(np.full((64, 96, 3), 200, dtype=np.uint8)).save(image)
    grounded = bubo("ground", "--image", str(image), "--weights", str(model_dir), "--json")
    assert grounded.returncode == 0, grounded.stderr
    assert "tags" in json.loads(grounded.stdout)

    cases = {
        "the grounding files go together: missing --groundingdino, --bert": flags[:2] + flags[6:8] + ["--out", str(model_dir)],
        "is not a model directory": flags + ["--out", str(tmp_path)],
    }
    state = {**states["ram"], "model": dict(states["ram"]["model"])}
    del state["model"]["fc.bias"]
    torch.save(state, tmp_path / "ram_without_fc_bias.pth")
    bad = list(flags)
    bad[bad.index("--ram") + 1] = str(tmp_path / "ram_without_fc_bias.pth")
    cases["fc.bias <- official key 'fc.bias'"] = bad + ["--out", str(model_dir)]
    for expected, args in cases.items():
        failed = bubo("convert", *args)
        assert failed.returncode == 2, failed.stderr
        lines = failed.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bubo convert: ") and expected in lines[0], failed.stderr
