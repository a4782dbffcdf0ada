"""`bubo`: the one command-line entry point. Subcommands import their modules lazily, so serving
never pulls in training code and `bubo info` stays quick."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _info(args: argparse.Namespace) -> int:
    from bubogpt.config import get_preset
    from bubogpt.info import describe

    cfg = get_preset(args.preset)
    rows = describe(cfg)
    if args.json:
        print(json.dumps({"preset": cfg.name, "components": rows, "total_params": sum(r["params"] for r in rows)}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"BuboGPT preset {cfg.name}")
    for column in ("component", "params", "input", "output"):
        table.add_column(column, justify="right" if column == "params" else "left")
    for row in rows:
        table.add_row(row["component"], f"{row['params']:,}", str(row["input"]), str(row["output"]))
    table.add_row("total", f"{sum(r['params'] for r in rows):,}", "", "")
    Console().print(table)
    return 0


def _init(args: argparse.Namespace) -> int:
    from bubogpt.defaults import write_random_model

    path = write_random_model(args.out, preset=args.preset, seed=args.seed)
    print(f"wrote {args.preset} weights (seed {args.seed}) to {path}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from bubogpt.convert import convert_official

    out = convert_official(
        args.out, args.preset, eva_vit_g=args.eva_vit_g, blip2=args.blip2, imagebind=args.imagebind,
        bubogpt=args.bubogpt, vicuna_dir=args.vicuna, link_llm=not args.copy_llm, allow_pickle=args.allow_pickle,
    )
    print(f"wrote {args.preset} model to {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from bubogpt.weights import load_model
    from export.repository import RepositorySettings, write_repository
    from serving.triton import model_env_dir

    from bubogpt.defaults import default_model_dir

    if args.weights:
        model = load_model(args.weights)
        if args.preset and model.cfg.name != args.preset:
            raise SystemExit(f"--weights holds a {model.cfg.name} model, not {args.preset}")
    elif args.preset in (None, "nano"):
        model = load_model(default_model_dir())
    else:
        raise SystemExit(f"--preset {args.preset} needs --weights DIR (see `bubo convert`); only nano is built in")
    env = model_env_dir()
    settings = RepositorySettings(
        device="cuda" if args.backend == "tensorrt" else "cpu",
        execution_env=str(env) if env.is_dir() else None,
    )
    from bubogpt.grounding.pipeline import has_grounding, load_grounding

    source = Path(args.weights) if args.weights else default_model_dir()
    grounding = load_grounding(source) if has_grounding(source) and not args.no_grounding else None
    if args.update:
        from export.repository import update_repository

        versions = update_repository(args.out, model, settings=settings, grounding=grounding)
        print(f"new versions in {args.out}: {versions}")
        return 0
    write_repository(args.out, model, backend=args.backend, settings=settings, overwrite=args.overwrite, grounding=grounding)
    print(f"wrote Triton model repository {args.out}")
    return 0


def _triton(args: argparse.Namespace) -> int:
    import signal
    import threading

    from serving.triton import TritonPorts, TritonServer

    server = TritonServer(args.model_repository, TritonPorts(args.http_port, args.grpc_port, args.metrics_port), log_path=args.log,
                          host=args.host)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"Triton ready: gRPC {server.url_grpc}, HTTP {server.url_http}, metrics {args.host}:{args.metrics_port}", flush=True)
    try:
        while not stop.is_set() and server.process and server.process.poll() is None:
            stop.wait(0.5)
    finally:
        server.stop()
    return 0


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from serving.app import ServeOptions, serve
    from serving.auth import api_key_from

    options = ServeOptions(
        weights=Path(args.weights) if args.weights else None, preset=args.preset, port=args.port, host=args.host,
        device=args.device, llm_engine=args.llm_engine, metrics_port=args.metrics_port or None,
        grounding=not args.no_grounding, matcher=args.matcher,
        repository=Path(args.model_repository) if args.model_repository else None,
        repository_poll_s=args.repository_poll_secs, triton_host=args.triton_host,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None, tls_key=Path(args.tls_key) if args.tls_key else None,
        api_key=api_key_from(args.api_key), drain_grace_s=args.drain_grace_s,
        **({"cache_dir": Path(args.cache_dir)} if args.cache_dir else {}),
    )
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not Path(path).is_file():
            raise SystemExit(f"{flag}: {path} is not a file")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("TLS needs both --tls-cert and --tls-key")
    asyncio.run(serve(options))
    return 0


def _input_files(args: argparse.Namespace) -> None:
    """--image / --audio must name readable files: one clear line otherwise, not a traceback."""
    for flag in ("image", "audio"):
        path = getattr(args, flag, None)
        if path and not Path(path).is_file():
            raise SystemExit(f"--{flag}: {path}: no such file")


def _endpoint(args: argparse.Namespace):
    from serving.client import Endpoint

    if args.tls_ca and not Path(args.tls_ca).is_file():
        raise SystemExit(f"--tls-ca: {args.tls_ca} is not a file")
    return Endpoint(args.server, tls=args.tls, tls_ca=args.tls_ca, api_key=args.api_key)


def _chat(args: argparse.Namespace) -> int:
    from serving.client import interactive_chat, main_chat

    _input_files(args)
    endpoint = _endpoint(args)
    if args.interactive:
        return interactive_chat(endpoint, args.image, args.audio, args.out, args.ground, args.max_new_tokens, args.temperature)
    if not args.text:
        raise SystemExit("give a question, or --interactive")
    return main_chat(endpoint, args.text, args.image, args.audio, args.out, args.ground, args.max_new_tokens, args.temperature)


def _ground(args: argparse.Namespace) -> int:
    from bubogpt.grounding.matching import RuleEntityMatcher
    from bubogpt.image import ImageDecodeError, decode_image

    _input_files(args)
    data = Path(args.image).read_bytes()
    if args.server:
        return _ground_remote(args, data)
    from bubogpt.defaults import default_model_dir
    from bubogpt.grounding.pipeline import load_grounding

    try:
        image = decode_image(data)
    except ImageDecodeError as exc:
        raise SystemExit(f"{args.image}: {exc}") from None
    result = load_grounding(args.weights or default_model_dir())(image)
    matches = RuleEntityMatcher().match(args.text, [e.label for e in result.entities]) if args.text else None
    entities = result.entities
    rows = []
    if matches is None:
        rows = [{"index": e.index, "label": e.label, "score": e.score, "box": list(e.box_xyxy), "mask": e.mask_rle()} for e in entities]
    else:
        for m in matches:
            e = entities[m.entity_index]
            rows.append({"index": e.index, "phrase": m.phrase, "start": m.start, "end": m.end, "label": e.label,
                         "score": e.score, "box": list(e.box_xyxy), "mask": e.mask_rle()})
        entities = [entities[i] for i in sorted({m.entity_index for m in matches})]
    if args.out:
        from bubogpt.grounding.overlay import save_overlay

        save_overlay(image, entities, args.out)
    if args.json:
        print(json.dumps({"tags": result.tags, "entities": rows}, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"tags: {', '.join(result.tags) or '(none)'}")
        for column in ("#", "phrase", "label", "score", "box (x0, y0, x1, y1)", "mask px"):
            table.add_column(column)
        for row in rows:
            table.add_row(str(row["index"]), row.get("phrase", ""), row["label"], f"{row['score']:.2f}",
                          ", ".join(f"{v:.0f}" for v in row["box"]), str(result.entities[row["index"]].mask_area()))
        Console().print(table)
        if args.out:
            print(f"overlay written to {args.out}")
    return 0


def _ground_remote(args: argparse.Namespace, data: bytes) -> int:
    import grpc

    from serving.client import save_entity_overlay
    from serving.proto import bubo_pb2, bubo_pb2_grpc

    with _endpoint(args).channel() as channel:
        try:
            response = bubo_pb2_grpc.BuboStub(channel).Ground(bubo_pb2.GroundRequest(image=data, text=args.text or ""))
        except grpc.RpcError as exc:
            raise SystemExit(f"error: {exc.code().name}: {exc.details()}") from None
    if args.out:
        save_entity_overlay(data, response.entities, args.out)
    from google.protobuf.json_format import MessageToDict

    print(json.dumps(MessageToDict(response), indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from training.nano.evaluate import evaluate_model, held_out_corpus, metrics_json, reference_predictor, server_predictor, side_by_side

    corpus_dir = Path(args.corpus_dir) if args.corpus_dir else Path.home() / ".cache" / "bubogpt" / "eval" / f"seed-{args.seed}-images-{args.images}"
    corpus = held_out_corpus(corpus_dir, args.seed, args.images, progress=True)
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    if args.server:
        predictors = {args.server: server_predictor(args.server)}
    else:
        models = args.model or [None]
        labels = [Path(m).name if m else "built-in" for m in models]
        if len(set(labels)) < len(labels):
            labels = [f"{Path(m).parent.name}/{Path(m).name}" if m else "built-in" for m in models]
        if len(set(labels)) < len(labels):
            labels = [f"{label} #{i + 1}" for i, label in enumerate(labels)]
        predictors = {label: reference_predictor(m, grounding=not args.no_grounding) for label, m in zip(labels, models)}
    columns = {}
    for label, predict in predictors.items():
        overlays = Path(args.overlays) / label.replace("/", "_").replace(":", "_") if args.overlays else None
        metrics, _ = evaluate_model(predict, corpus, tasks=tasks, limit=args.limit, ground=not args.no_grounding, progress=True,
                                    overlays=overlays)
        columns[label] = metrics
    side_by_side(columns, f"held-out world evaluation (seed {args.seed}, {args.images} images)")
    if args.json:
        Path(args.json).write_text(json.dumps({k: metrics_json(v) for k, v in columns.items()}, indent=2) + "\n")
    return 0


def _reference(args: argparse.Namespace) -> int:
    from bubogpt.reference import ReferencePipeline

    pipeline = ReferencePipeline.from_dir(args.weights)
    image = Path(args.image).read_bytes() if args.image else None
    audio = Path(args.audio).read_bytes() if args.audio else None
    result = pipeline.generate(args.text, image=image, audio=audio, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps({"text": result.text, "token_ids": result.token_ids, "finish_reason": result.finish_reason,
                          "prompt_tokens": result.prompt_tokens, "timings": result.timings}, indent=2))
    else:
        print(result.text)
        print(f"[{len(result.token_ids)} tokens, finish={result.finish_reason}, prompt={result.prompt_tokens} positions, "
              f"encode {result.timings['encode_s']:.3f}s, generate {result.timings['generate_s']:.3f}s]", file=sys.stderr)
    return 0


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", help="the server's token (default: $BUBO_API_KEY)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    parser.add_argument("--tls-ca", help="connect with TLS, trusting this CA certificate (PEM)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bubo", description="BuboGPT inference service")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=("plain", "json"), default="plain", help="json: one object per line")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="parameter counts and shapes per component")
    info.add_argument("--preset", default="nano")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_info)

    init = sub.add_parser("init", help="write deterministic random weights of a preset in our format")
    init.add_argument("--preset", default="nano")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--out", required=True)
    init.set_defaults(func=_init)

    convert = sub.add_parser("convert", help="official checkpoint files -> our format")
    convert.add_argument("--preset", default="bubogpt-7b")
    convert.add_argument("--eva-vit-g", required=True, help="eva_vit_g.pth")
    convert.add_argument("--blip2", required=True, help="blip2_pretrained_flant5xxl.pth")
    convert.add_argument("--imagebind", required=True, help="imagebind_huge.pth")
    convert.add_argument("--bubogpt", required=True, help="bubogpt_7b.pth")
    convert.add_argument("--vicuna", required=True, help="Vicuna-7B Hugging Face directory")
    convert.add_argument("--out", required=True)
    convert.add_argument("--copy-llm", action="store_true", help="copy the Vicuna directory instead of linking it")
    convert.add_argument("--allow-pickle", action="store_true", help="unpickle files that weights_only loading refuses")
    convert.set_defaults(func=_convert)

    export = sub.add_parser("export", help="export every network and write a Triton model repository")
    export.add_argument("--preset", default=None, help="nano (built in) or the preset of --weights")
    export.add_argument("--weights", help="model directory in our format")
    export.add_argument("--backend", choices=("onnx", "tensorrt"), default="onnx")
    export.add_argument("--out", required=True, help="repository directory to write")
    export.add_argument("--overwrite", action="store_true")
    export.add_argument("--no-grounding", action="store_true", help="leave the grounding networks out")
    export.add_argument("--update", action="store_true",
                        help="add the weights as new versions of an existing repository (a polling Triton loads them live)")
    export.set_defaults(func=_export)

    triton = sub.add_parser("triton", help="run Triton Inference Server on a model repository")
    triton.add_argument("--model-repository", required=True)
    triton.add_argument("--http-port", type=int, default=8000)
    triton.add_argument("--grpc-port", type=int, default=8001)
    triton.add_argument("--metrics-port", type=int, default=8002)
    triton.add_argument("--log", help="file for Triton's own log")
    triton.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    triton.set_defaults(func=_triton)

    serve = sub.add_parser("serve", help="serve BuboGPT over gRPC (Triton + LLM engine + frontend)")
    serve.add_argument("--preset", default=None, choices=("nano", "bubogpt-7b"))
    serve.add_argument("--weights", help="model directory in our format (default: the built-in nano model)")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    serve.add_argument("--llm-engine", choices=("vllm", "torch"), default="vllm")
    serve.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0: off)")
    serve.add_argument("--no-grounding", action="store_true")
    serve.add_argument("--model-repository", help="serve this Triton repository (default: export the weights to a cached one)")
    serve.add_argument("--repository-poll-secs", type=int, default=0,
                       help="> 0: load new model versions written by `bubo export --update` while serving")
    serve.add_argument("--matcher", choices=("auto", "rule", "llm"), default="auto",
                       help="entity matching: rule-based, the served LLM (paper's prompt), or auto by model size")
    serve.add_argument("--api-key", help="require `authorization: Bearer KEY` on every RPC but health (default: $BUBO_API_KEY)")
    serve.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM)")
    serve.add_argument("--tls-key", help="the certificate's private key (PEM)")
    serve.add_argument("--triton-host", default="127.0.0.1",
                       help="address the Triton it starts listens on (default loopback: only this frontend calls it)")
    serve.add_argument("--cache-dir", help="where exported repositories and Triton's log go (default ~/.cache/bubogpt)")
    serve.add_argument("--drain-grace-secs", dest="drain_grace_s", type=float, default=30.0,
                       help="on SIGTERM, how long in-flight streams may take to finish")
    serve.set_defaults(func=_serve)

    chat = sub.add_parser("chat", help="ask a running server; streams the answer, lists grounded entities")
    chat.add_argument("text", nargs="?")
    chat.add_argument("--server", default="127.0.0.1:50051")
    chat.add_argument("--interactive", "-i", action="store_true", help="keep the conversation going, one question per line")
    chat.add_argument("--image")
    chat.add_argument("--audio")
    chat.add_argument("--out", help="write the mask overlay here (PNG)")
    chat.add_argument("--ground", action=argparse.BooleanOptionalAction, default=None, help="default: on when an image is given")
    chat.add_argument("--max-new-tokens", type=int, default=0)
    chat.add_argument("--temperature", type=float, default=0.0)
    _connection_arguments(chat)
    chat.set_defaults(func=_chat)

    ground = sub.add_parser("ground", help="tags, boxes and masks for an image (matched to --text when given)")
    ground.add_argument("--image", required=True)
    ground.add_argument("--text", help="an answer whose phrases the entities are matched to")
    ground.add_argument("--weights", help="model directory with grounding/ (default: the built-in nano model)")
    ground.add_argument("--server", help="ask a running `bubo serve` (HOST:PORT) instead of running the models here")
    ground.add_argument("--json", action="store_true")
    ground.add_argument("--out", help="write the mask overlay here (PNG)")
    _connection_arguments(ground)
    ground.set_defaults(func=_ground)

    ref = sub.add_parser("reference", help="answer with the plain PyTorch reference pipeline (no server)")
    ref.add_argument("text")
    ref.add_argument("--image")
    ref.add_argument("--audio")
    ref.add_argument("--weights", help="model directory in our format (default: the built-in nano model)")
    ref.add_argument("--max-new-tokens", type=int, default=64)
    ref.add_argument("--json", action="store_true")
    ref.set_defaults(func=_reference)

    ev = sub.add_parser("eval", help="answers and grounding on held-out synthetic-world seeds (side by side for several models)")
    ev.add_argument("--model", action="append", help="model directory; repeat to compare side by side (default: the built-in model)")
    ev.add_argument("--server", help="evaluate a running `bubo serve` at HOST:PORT instead")
    ev.add_argument("--seed", type=int, default=1000, help="world seed of the held-out corpus (training uses 0)")
    ev.add_argument("--images", type=int, default=200, help="images in the held-out corpus")
    ev.add_argument("--tasks", help="comma-separated subset of caption,describe,qa,audio,audio_caption,source,negative")
    ev.add_argument("--limit", type=int, help="evaluate only the first N items")
    ev.add_argument("--no-grounding", action="store_true", help="score answers only")
    ev.add_argument("--corpus-dir", help="where the held-out corpus goes (default: ~/.cache/bubogpt/eval/seed-S-images-K)")
    ev.add_argument("--json", help="also write the metrics here")
    ev.add_argument("--overlays", help="save mask overlays and answers of the first grounded images here (one folder per model)")
    ev.set_defaults(func=_eval)

    from training.cli import add_train_parser  # `bubo train stage1|stage2|nano`

    add_train_parser(sub)
    from benchmarks.cli import add_bench_parser  # `bubo bench [--suite e2e|perf|baseline|all] [--quick]`

    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from serving.logs import configure_logging

    configure_logging(args.log_level, args.log_format)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
