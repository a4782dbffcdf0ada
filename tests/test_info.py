"""`bubo info`: per-component parameter counts of the official architecture, built on meta."""

import json
import subprocess
import sys

from bubogpt.config import get_preset
from bubogpt.info import describe

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


def test_7b_counts_equal_the_official_architecture():
    rows = {row["component"]: row for row in describe(get_preset("bubogpt-7b"))}
    assert {name: row["params"] for name, row in rows.items()} == OFFICIAL_7B
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
    assert {row["component"]: row["params"] for row in data["components"]} == OFFICIAL_7B
    assert data["total_params"] == sum(OFFICIAL_7B.values())


def test_nano_has_every_component_and_llm_head_dim_32():
    rows = describe(get_preset("nano"))
    assert [row["component"] for row in rows] == list(OFFICIAL_7B)
    assert all(row["params"] > 0 for row in rows)
    assert get_preset("nano").llm.head_dim == 32
