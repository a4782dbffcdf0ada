"""torch -> ONNX with a dynamic batch axis, then a parity check against PyTorch in ONNX Runtime."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.specs import ExportSpec

log = logging.getLogger(__name__)

ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4  # fp32 relative error, max |torch - ort| / max |torch|


class ParityError(RuntimeError):
    """An exported artefact does not reproduce PyTorch within the tolerance."""


@dataclass
class ParityResult:
    name: str
    backend: str
    batch: int
    relative_error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.relative_error <= self.tolerance


def export_onnx(spec: ExportSpec, path: Path, example_batch: int = 2) -> Path:
    """Exports with TorchScript-based export (opset 17). A graph under protobuf's 2 GiB limit is one
    self-contained .onnx file; a larger one (EVA-ViT-g, SAM ViT-H in fp32) keeps its weights in one
    external data file beside it, `<name>.onnx.data`, which ONNX Runtime and TensorRT's parser find
    by that relative name (torch writes one file per tensor there; they are gathered into one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = spec.example(example_batch)
    module = spec.module.eval()
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as scratch:
        exported = Path(scratch) / path.name
        with torch.no_grad():
            torch.onnx.export(
                module,
                tuple(example.values()),
                str(exported),
                input_names=list(example),
                output_names=spec.outputs,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        gather_external_data(exported, path)
    return path


def gather_external_data(exported: Path, path: Path) -> None:
    """`exported` (alone in its folder, or with one external file per tensor as torch writes them for
    graphs over 2 GiB) -> `path`, self-contained or with all weights in `<name>.onnx.data`."""
    if len(list(exported.parent.iterdir())) == 1:
        exported.replace(path)
        return
    import onnx

    graph = onnx.load(str(exported))  # reads the per-tensor files back in
    data = external_data_path(path)
    data.unlink(missing_ok=True)
    onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    log.info("%s: %.2f GB of weights in %s", path, data.stat().st_size / 1e9, data.name)


def external_data_path(path: Path) -> Path:
    return path.with_name(path.name + ".data")


def onnx_files(path: Path) -> list[Path]:
    """The .onnx file and its external data file, where it has one."""
    data = external_data_path(path)
    return [path, data] if data.exists() else [path]


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """max |reference - candidate| / max |reference| over finite entries; inf if shapes or the
    non-finite entries (e.g. the detector's -inf on padded text positions) differ."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        return float("inf")
    finite = np.isfinite(reference)
    if not np.array_equal(finite, np.isfinite(candidate)) or not np.array_equal(reference[~finite], candidate[~finite]):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = float(np.max(np.abs(reference[finite]))) or 1.0
    return float(np.max(np.abs(reference[finite] - candidate[finite]))) / scale


MATCH_DISTANCE = 1e-3  # boxes (normalised cxcywh) this close are the same query
MIN_MATCHED = 0.99
# The swapped proposals also shift every other query a little (decoder self-attention): on the
# full-size random detector PyTorch against itself (1 vs 2 threads) differs by 6.5e-4 over the paired
# queries, ONNX Runtime against PyTorch by 6.5e-4 (benchmarks/results/full-size-cpu-20261202).
MATCHED_QUERY_TOLERANCE = 1e-2


def matched_query_error(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """[logits, boxes] of a detector whose queries are a top-k selection: near-ties in the scores swap a
    few proposals in or out (and reorder them) between runs that differ only in rounding, so queries are
    paired one to one by box first (an assignment, so that two queries on one box pair with two); the
    error is `relative_error` over the paired ones, inf if under 99 % pair."""
    from scipy.optimize import linear_sum_assignment

    (logits_e, boxes_e), (logits_g, boxes_g) = expected[:2], got[:2]
    if boxes_e.shape != boxes_g.shape or logits_e.shape != logits_g.shape:
        return float("inf")
    errors = []
    for b in range(boxes_e.shape[0]):
        distance = np.abs(boxes_e[b][:, None, :] - boxes_g[b][None, :, :]).max(-1)
        close = distance <= MATCH_DISTANCE
        # every pair beyond the distance costs the same (1), so that the assignment pairs as many as it
        # can and never trades a true pair for a nearer miss; queries on one box go by their top logit
        top_e, top_g = (np.where(np.isfinite(x[b]), x[b], -np.inf).max(-1) for x in (logits_e, logits_g))
        tie = np.nan_to_num(np.minimum(np.abs(top_e[:, None] - top_g[None, :]), 1.0), nan=0.0)
        rows, cols = linear_sum_assignment(np.where(close, distance + 1e-6 * tie, 1.0))
        paired = close[rows, cols]
        if paired.sum() < MIN_MATCHED * len(boxes_e[b]):
            return float("inf")
        rows, cols = rows[paired], cols[paired]
        errors.append(relative_error(logits_e[b][rows], logits_g[b][cols]))
        errors.append(relative_error(boxes_e[b][rows], boxes_g[b][cols]))
    return max(errors)


def output_error(spec: ExportSpec, expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """The parity check's error of one run: the worst output's `relative_error`, or for top-k query
    outputs (`spec.parity == "matched_queries"`) `matched_query_error`."""
    got = [np.asarray(g) for g in got]
    if spec.parity == "matched_queries":
        return matched_query_error(expected, got)
    return max(relative_error(e, g) for e, g in zip(expected, got))


def torch_outputs(spec: ExportSpec, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = spec.module.eval()(*inputs.values())
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().numpy() for o in out]


def check_onnx(spec: ExportSpec, path: Path, batch: int = 3, tolerance: float = ONNX_TOLERANCE) -> ParityResult:
    """Runs the file in ONNX Runtime at a batch size other than the export example's. PyTorch runs
    first and ONNX Runtime without its memory arena, so that the two never hold their activations at
    the same time (SAM ViT-H at 1024 px, batch 3: several GiB each)."""
    import onnxruntime as ort

    inputs = spec.example(batch, seed=1)
    expected = torch_outputs(spec, inputs)
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(spec.outputs, {k: v.numpy() for k, v in inputs.items()})
    del session
    error = output_error(spec, expected, got)
    tolerance = max(tolerance, MATCHED_QUERY_TOLERANCE) if spec.parity == "matched_queries" else tolerance
    return ParityResult(spec.name, "onnx", int(next(iter(inputs.values())).shape[0]), error, tolerance)
