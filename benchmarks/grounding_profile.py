"""Where a grounded picture's time goes (issue 14): Triton's `grounding` ensemble model by model, next to
the same networks run by the PyTorch pipeline in one process (what the baseline does).

    python -m benchmarks.grounding_profile [--pictures 8] [--preprocess-threads 2,1] [--out benchmarks/results]

The pictures are the e2e suite's grounding pictures (`benchmarks.inputs.grounding_pair_requests`), one
request at a time. Triton side: the wall time of each `grounding` request and, per model, Triton's
statistics read before and after (queue, compute input / infer / output per request; the python
models' BLS calls to `detector` and `sam_prompt_decoder` are inside grounding_postprocess's infer
time). In-process side: `GroundingPipeline`'s stages timed one by one on the same pictures, after a
warm-up. `--preprocess-threads` runs the Triton side once per value of grounding_preprocess's torch
threads (a copy of the repository each), one after the other in this run. Writes
grounding-profile-<timestamp>/results.json and README.md.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def triton_side(repository: Path, pictures: list[bytes]) -> dict:
    import tritonclient.grpc as grpcclient

    from benchmarks.profile_stages import triton_delta, triton_stats
    from serving.app import free_port
    from serving.triton import TritonPorts, TritonServer

    server = TritonServer(repository, TritonPorts(free_port(), free_port(), free_port()))
    server.start(timeout=300)
    try:
        client = grpcclient.InferenceServerClient(server.url_grpc)

        def ground(data: bytes) -> float:
            tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[data]], dtype=object))
            start = time.perf_counter()
            client.infer("grounding", [tensor], client_timeout=300)
            return time.perf_counter() - start

        ground(pictures[0])  # warm-up: ONNX Runtime's first run allocates
        before = triton_stats(f"http://{server.url_http}")
        wall = [ground(data) for data in pictures]
        after = triton_stats(f"http://{server.url_http}")
    finally:
        server.stop()
    return {"wall_ms": [round(w * 1e3, 1) for w in wall], "models": triton_delta(before, after, len(pictures))}


def in_process_side(pictures: list[bytes]) -> dict:
    import torch
    from PIL import Image

    from bubogpt.defaults import default_model_dir
    from bubogpt.grounding import ram, sam
    from bubogpt.grounding.grounding_dino.preprocessing import caption_from_tags
    from bubogpt.grounding.pipeline import clean_phrase, clip_box, fill_small_holes, load_grounding

    pipeline = load_grounding(default_model_dir())
    stages: dict[str, list[float]] = {name: [] for name in
                                      ("decode", "tagger", "detector", "sam_image_encoder", "sam_prompt_decoder", "masks")}

    @torch.inference_mode()
    def ground(data: bytes, record: bool) -> None:
        times = {}
        t = time.perf_counter()
        image = Image.open(io.BytesIO(data)).convert("RGB")
        times["decode"], t = time.perf_counter() - t, time.perf_counter()
        probs = pipeline.tagger(ram.preprocess_image(image, pipeline.tagger.config)[None])[0]
        tags = ram.select_tags(probs, pipeline.thresholds, pipeline.tag_list, pipeline.deleted_tags)
        times["tagger"], t = time.perf_counter() - t, time.perf_counter()
        detections = pipeline.detect(image, caption_from_tags(tags))[: pipeline.config.max_entities] if tags else []
        detections = [d for d in (d._replace(phrase=clean_phrase(d.phrase)) for d in detections) if d.phrase]
        times["detector"], t = time.perf_counter() - t, time.perf_counter()
        scfg = pipeline.segmenter_encoder.config
        pixels, input_hw = sam.preprocess_image(np.asarray(image, dtype=np.uint8), scfg)
        embeddings = pipeline.segmenter_encoder(torch.from_numpy(pixels)[None])
        times["sam_image_encoder"], t = time.perf_counter() - t, time.perf_counter()
        if detections:
            boxes = np.array([clip_box(d.box_xyxy, image.width, image.height) for d in detections], dtype=np.float32)
            prompts = torch.from_numpy(sam.transform_boxes(boxes, (image.height, image.width), scfg))[None]
            low_res, _ = pipeline.segmenter_decoder(embeddings, prompts)
            times["sam_prompt_decoder"], t = time.perf_counter() - t, time.perf_counter()
            logits = sam.postprocess_masks(low_res[0], input_hw, (image.height, image.width), scfg)
            [fill_small_holes(m, pipeline.config.hole_area) for m in sam.masks_from_logits(logits).numpy()]
        else:
            times["sam_prompt_decoder"], t = 0.0, time.perf_counter()
        times["masks"] = time.perf_counter() - t
        if record:
            for name, seconds in times.items():
                stages[name].append(seconds)

    ground(pictures[0], record=False)
    wall = []
    for data in pictures:
        start = time.perf_counter()
        ground(data, record=True)
        wall.append(time.perf_counter() - start)
    return {"threads": torch.get_num_threads(), "wall_ms": [round(w * 1e3, 1) for w in wall],
            "stages_ms": {name: round(float(np.mean(v)) * 1e3, 1) for name, v in stages.items()}}


def to_markdown(record: dict) -> str:
    local = record["in_process"]
    lines = [f"# Grounding, model by model ({record['pictures']} pictures, one at a time)", "",
             f"`{record['command']}`", "",
             f"In process (PyTorch, {local['threads']} threads): p50 {np.median(local['wall_ms']):.1f} ms per picture."]
    for threads, triton in record["triton"].items():
        lines += ["", f"Triton `grounding` with grounding_preprocess at {threads} torch thread(s): "
                  f"p50 {np.median(triton['wall_ms']):.1f} ms per picture. Triton's statistics, ms per request:", "",
                  "| model | requests per picture | queue | compute input | compute infer | compute output |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in triton["models"]:
            lines.append(f"| {row['model']} | {row['per_chat_request']:.2f} | {row['queue_ms_per_request']:.1f} | "
                         f"{row['compute_input_ms_per_request']:.1f} | {row['compute_infer_ms_per_request']:.1f} | "
                         f"{row['compute_output_ms_per_request']:.1f} |")
    lines += ["", "In process, ms per picture:", "", "| stage | ms |", "| --- | ---: |"]
    lines += [f"| {name} | {ms} |" for name, ms in local["stages_ms"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pictures", type=int, default=8)
    parser.add_argument("--preprocess-threads", default="1", help="grounding_preprocess torch threads, e.g. 2,1")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "bubogpt"))
    args = parser.parse_args(argv)
    from benchmarks.inputs import grounding_pair_requests
    from bubogpt.defaults import default_model_dir
    from serving.app import ServeOptions, ensure_repository

    pictures = [r.image for r in grounding_pair_requests(args.pictures)[1]]
    repository = ensure_repository(default_model_dir(), ServeOptions(cache_dir=Path(args.cache_dir)))
    record = {"command": f"python -m benchmarks.grounding_profile --pictures {args.pictures} --preprocess-threads {args.preprocess_threads}",
              "pictures": len(pictures), "triton": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for threads in [int(t) for t in args.preprocess_threads.split(",")]:
            copy = Path(scratch) / f"repository-{threads}"
            shutil.copytree(repository, copy)
            settings_path = copy / "grounding_preprocess" / "1" / "bubo.json"
            settings = json.loads(settings_path.read_text())
            settings_path.write_text(json.dumps({**settings, "torch_threads": threads}))
            record["triton"][threads] = triton_side(copy, pictures)
    record["in_process"] = in_process_side(pictures)
    from benchmarks.report import write_run

    write_run(args.out, "grounding-profile", record, to_markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
