"""`bubo info`: per-component parameter counts of the official architecture, built on meta."""

import json
import os
import re
import subprocess
import sys

from bubogpt.config import get_preset
from bubogpt.info import describe, describe_preset

# Counted once from the official definitions (magic-research/bubogpt: eva_vit.py with depth 39 +
# BLIP-2's ln_vision; Qformer.py after set_Qformer() drops the text parts; imagebind_huge's audio
# preprocessor + trunk; ImageBindJoiner's Linear(768, 4096) projections), built on the meta
# device; the LLM is Vicuna-7B (LLaMA-7B: 6,738,415,616).
OFFICIAL_7B = {
    "vision_encoder": 985_897_344,
    "vision_qformer": 105_162_240,
    "vision_proj": 3_149_824,
    "audio_encoder": 85_447_680,
    "audio_qformer": 99_264_000,
    "audio_proj": 3_149_824,
    "llm": 6_738_415_616,
}
# The grounding networks we build and serve, and the official models' own counts
# (sum(p.numel() for p in model.parameters()): shared/tied tensors once), obtained by instantiating the
# official code: RAM(image_size=384, vit="swin_l") of recognize-anything 7cb804a (tag_encoder layers 0-1
# tied to tagging_head, LM head tied to the word embeddings), GroundingDINO_SwinT_OGC.py of
# GroundingDINO 856dde2 with bert-base-uncased sizes, sam_model_registry["vit_h"] of segment-anything
# dca509f. Ours: RAM's tagging path (test_ram), Grounding DINO without the BERT pooler
# (test_grounding_dino), SAM without the point and mask prompt paths (test_sam).
GROUNDING_7B = {"tagger": 212_117_045, "detector": 172_249_090, "segmenter": 641_085_156}
OFFICIAL_GROUNDING = {"tagger": 469_148_785, "detector": 172_839_682, "segmenter": 641_090_608}


def test_7b_counts_equal_the_official_architecture():
    assert {row["component"]: row["params"] for row in describe(get_preset("bubogpt-7b"))} == OFFICIAL_7B
    rows = {row["component"]: row for row in describe_preset(get_preset("bubogpt-7b"))}
    assert {name: row["params"] for name, row in rows.items()} == OFFICIAL_7B | GROUNDING_7B
    assert {name: rows[name]["official_params"] for name in OFFICIAL_7B} == OFFICIAL_7B
    assert {name: rows[name]["official_params"] for name in GROUNDING_7B} == OFFICIAL_GROUNDING
    assert rows["detector"]["official_params"] - rows["detector"]["params"] == 768 * 768 + 768  # BERT pooler
    assert rows["segmenter"]["official_params"] - rows["segmenter"]["params"] == 5_452  # point + mask prompts
    assert [rows[n]["network"] for n in GROUNDING_7B] == ["RAM Swin-L, 384 px", "Grounding DINO Swin-T OGC", "SAM ViT-H"]
    assert rows["tagger"]["input"] == ["B", 3, 384, 384] and rows["tagger"]["output"] == ["B", 4585]
    assert rows["detector"]["output"] == ["B", 900, 256]
    assert rows["segmenter"]["input"] == ["B", 3, 1024, 1024] and rows["segmenter"]["output"] == ["B", "N", 256, 256]
    assert rows["vision_encoder"]["output"] == ["B", 257, 1408]
    assert rows["audio_encoder"]["input"] == ["B", 7, 1, 128, 204]
    assert rows["audio_encoder"]["output"] == ["B", 229, 768]
    assert rows["vision_proj"]["output"] == ["B", 32, 4096]
    assert rows["llm"]["output"] == ["S", 32000]


def test_cli_json_output():
    out = subprocess.run(
        [sys.executable, "-m", "bubo_cli", "info", "--preset", "bubogpt-7b", "--json"],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout
    data = json.loads(out)
    assert data["preset"] == "bubogpt-7b"
    assert {row["component"]: row["params"] for row in data["components"]} == OFFICIAL_7B | GROUNDING_7B
    assert len(data["components"]) == 10
    assert data["total_params"] == sum(OFFICIAL_7B.values()) + sum(GROUNDING_7B.values())


def test_cli_table_shows_the_ten_networks_and_the_official_counts():
    out = subprocess.run(
        [sys.executable, "-m", "bubo_cli", "info", "--preset", "bubogpt-7b"],
        check=True, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    ).stdout
    for name, params in (OFFICIAL_7B | GROUNDING_7B).items():
        assert re.search(rf"{name} .*{params:,}", out), name
    for name, params in OFFICIAL_GROUNDING.items():
        assert f"{name}: the official model has {params:,}" in out


def test_nano_has_every_component_and_llm_head_dim_32():
    rows = describe_preset(get_preset("nano"))
    assert [row["component"] for row in rows] == list(OFFICIAL_7B) + list(GROUNDING_7B)
    assert all(row["params"] > 0 for row in rows)
    assert get_preset("nano").llm.head_dim == 32
