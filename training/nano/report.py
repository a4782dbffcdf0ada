"""The final report of `bubo train nano`, as tables."""

from __future__ import annotations

from typing import Any, Mapping

PARTS = ("llm", "vision_encoder", "audio_encoder", "stage1", "stage2", "stage2_no_negatives")


def print_report(report: Mapping[str, Any], console=None) -> str:
    from rich.table import Table

    from training.nano.evaluate import show, side_by_side, targets_table

    table = Table(title="bubo train nano")
    table.add_column("part")
    table.add_column("steps", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("result")
    for part in PARTS:
        if part not in report:
            continue
        r = report[part]
        result = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("steps", "seconds", "history", "token_accuracy_by_task"))
        table.add_row(part, str(r.get("steps", "")), str(r.get("seconds", "")), result)
    grounding = report.get("grounding")
    if grounding:
        seconds = grounding.get("seconds", {})
        objects = (grounding.get("eval") or {}).get("objects") or {}
        result = ", ".join(f"{k} {v:.3f}" for k, v in objects.items() if k in ("precision", "recall", "f1", "box_iou", "mask_iou"))
        steps = sum(grounding.get("plan", {}).values())
        table.add_row("grounding (tagger, detector, segmenter)", str(steps or ""),
                      f"{seconds.get('train_total', 0):.1f}" if isinstance(seconds, dict) else str(seconds),
                      f"objects {result}" if result else "")
    text = show(table, width=140, console=console)
    if "eval" in report:
        text += side_by_side({"trained": _metrics(report["eval"])}, "held-out evaluation", console)
        text += targets_table(_metrics(report["eval"]), "targets (held-out seed)", console)
    if "ablation" in report:
        text += side_by_side({k: _metrics(v) for k, v in report["ablation"].items()}, "stage 2 with / without negative pairs", console)
    total = report.get("total_minutes")
    if total is not None:
        line = f"total {total} min"
        (console.print if console is not None else print)(line)
        text += line + "\n"
    return text


def _metrics(flat: Mapping[str, Any]):
    from training.eval import Metric

    out = {}
    for name, value in flat.items():
        if isinstance(value, Mapping):
            out[name] = Metric(value["value"] * value["n"], value["n"])
        else:
            out[name] = value
    return out
