"""The serving layer's subcommands: `bubo serve`, `bubo chat`, `bubo ground`, `bubo triton`, `bubo llm-server`.

Registered by the `bubo` command (bubo_cli/main.py); each imports its modules when it runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _triton(args: argparse.Namespace) -> int:
    import signal
    import threading

    from serving.triton import TritonPorts, TritonServer

    server = TritonServer(args.model_repository, TritonPorts(args.http_port, args.grpc_port, args.metrics_port), log_path=args.log_file or "-",
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


def _llm_server(args: argparse.Namespace) -> int:
    from serving.llm_server import LLMServerOptions, run

    if args.weights and not (Path(args.weights) / "bubogpt.json").is_file():
        raise SystemExit(f"--weights: {args.weights} is not a model directory (no bubogpt.json; see `bubo convert`)")
    options = LLMServerOptions(weights=Path(args.weights) if args.weights else None, host=args.host, port=args.port,
                               device=args.device, kv_cache_gib=args.kv_cache_gib, max_num_seqs=args.max_num_seqs,
                               served_model_name=args.served_model_name)
    return run(options, print_args=args.print_args)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from serving.app import ServeOptions, serve
    from serving.auth import api_key_from

    if args.weights and not (Path(args.weights) / "bubogpt.json").is_file():
        raise SystemExit(f"--weights: {args.weights} is not a model directory (no bubogpt.json; see `bubo convert`)")
    if args.model_repository and not Path(args.model_repository).is_dir():
        raise SystemExit(f"--model-repository: {args.model_repository}: no such directory")
    if args.triton_url and args.model_repository:
        raise SystemExit("--triton-url and --model-repository exclude each other: the remote Triton serves its own repository")
    if args.llm_url and args.llm_engine != "vllm":
        raise SystemExit("--llm-url and --llm-engine exclude each other: the remote LLM servers are vLLM")
    for url in args.llm_url or ():
        if not url.strip() or " " in url.strip():
            raise SystemExit(f"--llm-url: {url!r} is not a URL (e.g. http://llm-0:8000)")
    if args.triton_url and ":" not in args.triton_url:
        raise SystemExit(f"--triton-url: {args.triton_url!r} is not HOST:PORT (Triton's gRPC port, e.g. triton:8001)")
    options = ServeOptions(
        weights=Path(args.weights) if args.weights else None, preset=args.preset, port=args.port, host=args.host,
        http_port=args.http_port, incremental_entities=args.incremental_entities,
        device=args.device, llm_engine=args.llm_engine, metrics_port=args.metrics_port or None,
        grounding=not args.no_grounding, matcher=args.matcher,
        repository=Path(args.model_repository) if args.model_repository else None,
        repository_poll_s=args.repository_poll_secs, triton_host=args.triton_host,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None, tls_key=Path(args.tls_key) if args.tls_key else None,
        api_key=api_key_from(args.api_key), drain_grace_s=args.drain_grace_s,
        triton_url=args.triton_url, llm_urls=tuple(args.llm_url or ()),
        vllm_executor=None if args.vllm_executor == "auto" else args.vllm_executor,
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


def endpoint_from(args: argparse.Namespace):
    from serving.client import Endpoint

    if args.tls_ca and not Path(args.tls_ca).is_file():
        raise SystemExit(f"--tls-ca: {args.tls_ca} is not a file")
    return Endpoint(args.server, tls=args.tls, tls_ca=args.tls_ca, api_key=args.api_key)


def _chat(args: argparse.Namespace) -> int:
    from serving.client import interactive_chat, main_chat

    _input_files(args)
    endpoint = endpoint_from(args)
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

    with endpoint_from(args).channel() as channel:
        try:
            response = bubo_pb2_grpc.BuboStub(channel).Ground(bubo_pb2.GroundRequest(image=data, text=args.text or ""))
        except grpc.RpcError as exc:
            raise SystemExit(f"error: {exc.code().name}: {exc.details()}") from None
    if args.out:
        save_entity_overlay(data, response.entities, args.out)
    from google.protobuf.json_format import MessageToDict

    print(json.dumps(MessageToDict(response), indent=2))
    return 0


def connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", help="the server's token (default: $BUBO_API_KEY)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    parser.add_argument("--tls-ca", help="connect with TLS, trusting this CA certificate (PEM)")


def register(sub) -> None:
    triton = sub.add_parser("triton", help="run Triton Inference Server on a model repository")
    triton.add_argument("--model-repository", required=True)
    triton.add_argument("--http-port", type=int, default=8000)
    triton.add_argument("--grpc-port", type=int, default=8001)
    triton.add_argument("--metrics-port", type=int, default=8002)
    triton.add_argument("--log-file", help="file for Triton's own log (default: standard output)")
    triton.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    triton.set_defaults(func=_triton)

    serve = sub.add_parser("serve", help="serve BuboGPT over gRPC (Triton + LLM engine + frontend)")
    serve.add_argument("--preset", default=None, choices=("nano", "bubogpt-7b"))
    serve.add_argument("--weights", help="model directory in our format (default: the built-in nano model)")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument("--http-port", type=int, default=8080,
                       help="the OpenAI-compatible HTTP API (/v1/chat/completions) and the web page (/); 0: off")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    serve.add_argument("--llm-engine", choices=("vllm", "torch"), default="vllm")
    serve.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0: off)")
    serve.add_argument("--no-grounding", action="store_true")
    serve.add_argument("--model-repository", help="serve this Triton repository (default: export the weights to a cached one)")
    serve.add_argument("--repository-poll-secs", type=int, default=0,
                       help="> 0: load new model versions written by `bubo export --update` while serving")
    serve.add_argument("--matcher", choices=("auto", "rule", "llm"), default="auto",
                       help="entity matching of the complete answer: rule-based, the served LLM (paper's prompt), or auto "
                            "(llm for bubogpt-7b, rule for nano)")
    serve.add_argument("--incremental-entities", action=argparse.BooleanOptionalAction, default=True,
                       help="send each entity as soon as its phrase is written (rule matcher); --matcher adds the rest at the end")
    serve.add_argument("--api-key", help="require `authorization: Bearer KEY` on every RPC but health (default: $BUBO_API_KEY)")
    serve.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM)")
    serve.add_argument("--tls-key", help="the certificate's private key (PEM)")
    serve.add_argument("--triton-host", default="127.0.0.1",
                       help="address the Triton it starts listens on (default loopback: only this frontend calls it)")
    serve.add_argument("--cache-dir", help="where exported repositories and Triton's log go (default ~/.cache/bubogpt)")
    serve.add_argument("--drain-grace-secs", dest="drain_grace_s", type=float, default=30.0,
                       help="on SIGTERM, how long in-flight streams may take to finish")
    serve.add_argument("--vllm-executor", choices=("auto", "mp", "uni"), default="auto",
                       help="where vLLM runs the model: a worker process (mp) or its engine core (uni); auto: vLLM's choice")
    serve.add_argument("--triton-url", help="use this running Triton (its gRPC HOST:PORT, e.g. `bubo triton`) instead of starting one")
    serve.add_argument("--llm-url", action="append",
                       help="use this running LLM server (`bubo llm-server`, e.g. http://llm-0:8000) instead of the in-process "
                            "engine; repeat for several (least-loaded, a dead one is skipped and retried)")
    serve.set_defaults(func=_serve)

    llm = sub.add_parser("llm-server", help="run the LLM tier: vLLM's own OpenAI-compatible server with the BuboGPT plugin")
    llm.add_argument("--weights", help="model directory in our format (default: the built-in nano model)")
    llm.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    llm.add_argument("--port", type=int, default=8000)
    llm.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    llm.add_argument("--kv-cache-gib", type=float, default=1.0, help="CPU: the KV cache size")
    llm.add_argument("--max-num-seqs", type=int, default=64)
    llm.add_argument("--served-model-name", help="default: bubogpt-<preset>")
    llm.add_argument("--print-args", action="store_true", help="print the vLLM command and environment instead of running it")
    llm.set_defaults(func=_llm_server)

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
    connection_arguments(chat)
    chat.set_defaults(func=_chat)

    ground = sub.add_parser("ground", help="tags, boxes and masks for an image (matched to --text when given)")
    ground.add_argument("--image", required=True)
    ground.add_argument("--text", help="an answer whose phrases the entities are matched to")
    ground.add_argument("--weights", help="model directory with grounding/ (default: the built-in nano model)")
    ground.add_argument("--server", help="ask a running `bubo serve` (HOST:PORT) instead of running the models here")
    ground.add_argument("--json", action="store_true")
    ground.add_argument("--out", help="write the mask overlay here (PNG)")
    connection_arguments(ground)
    ground.set_defaults(func=_ground)
