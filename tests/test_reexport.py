"""Train -> export as new repository versions -> the running server answers with the new weights,
without a restart (Triton polls its repository; the frontend empties its embedding cache)."""

import time

import grpc
import torch

from bubogpt.defaults import default_model_dir
from bubogpt.llm import load_llm
from bubogpt.reference import ReferencePipeline
from bubogpt.tokenizer import load_tokenizer
from bubogpt.weights import llm_dir, load_model
from conftest import make_image_bytes
from export.repository import RepositorySettings, update_repository, write_repository
from serving.app import ServeOptions, Stack
from serving.client import chat_request, collect
from serving.proto import bubo_pb2_grpc
from export.triton_install import model_env_dir
from training.config import config_from_dict
from training.loop import Trainer
from training.tiny_data import write_tiny_datasets

IMAGE = make_image_bytes(seed=77)


def train_stage1(tmp_path):
    data = write_tiny_datasets(tmp_path / "data", count=2)
    cfg = config_from_dict({
        "stage": "stage1", "output_dir": str(tmp_path / "run"), "seed": 0, "progress": False, "log_every": 1,
        "save_every": 100, "optim": {"steps": 6, "init_lr": 1e-2, "min_lr": 1e-3, "warmup_lr": 1e-3, "warmup_steps": 1},
        "data": {"batch_size": 2, "datasets": [
            {"name": "images", "kind": "caption_shards", "modality": "image",
             "shards": [str(data["image_shards"].parent / "images-000000.tar")]},
        ]},
    })
    base = default_model_dir()
    trainer = Trainer(cfg, model=load_model(base), llm=load_llm(llm_dir(base)), tokenizer=load_tokenizer(llm_dir(base)))
    trainer.fit()
    return tmp_path / "run" / "model"


def test_trained_weights_reach_the_running_server(tmp_path, loop):
    repo = tmp_path / "repo"
    write_repository(repo, load_model(default_model_dir()), settings=RepositorySettings(execution_env=str(model_env_dir())))
    options = ServeOptions(port=0, metrics_port=None, http_port=0, cache_dir=tmp_path / "cache", repository=repo,
                           repository_poll_s=1, grounding=False)
    stack = loop.run(Stack(options).start(), timeout=900)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as channel:
            stub = bubo_pb2_grpc.BuboStub(channel)
            question = "Describe the image."
            before = collect(stub.Chat(chat_request(question, IMAGE, max_new_tokens=12)))
            original = ReferencePipeline.from_dir()
            assert before.token_ids == original.generate(question, image=IMAGE, max_new_tokens=12).token_ids

            trained_dir = train_stage1(tmp_path)
            trained = load_model(trained_dir)
            assert not torch.equal(trained.vision_proj.weight, original.model.vision_proj.weight)
            versions = update_repository(repo, trained, settings=RepositorySettings(execution_env=str(model_env_dir())))
            assert versions == {"image_embed": 2, "audio_embed": 2}  # the fused CPU models hold the networks

            new_reference = ReferencePipeline(trained, original.llm, original.tokenizer)
            expected = new_reference.generate(question, image=IMAGE, max_new_tokens=12)
            assert not torch.allclose(new_reference.embed_image(IMAGE), original.embed_image(IMAGE))
            deadline, after = time.time() + 120, None
            while time.time() < deadline:  # Triton loads version 2 within its poll interval
                time.sleep(1.5)
                after = collect(stub.Chat(chat_request(question, IMAGE, max_new_tokens=12)))
                if after.token_ids == expected.token_ids:
                    break
            assert after.token_ids == expected.token_ids
            served, _ = loop.run(stack.encoders.embed("image", IMAGE))
            want = new_reference.embed_image(IMAGE)
            assert float((served - want).abs().max() / want.abs().max()) < 1e-4
            index = loop.run(stack.encoders.loaded_versions())
            assert ("image_embed", "2") in index and ("image_embed", "1") not in index
    finally:
        loop.run(stack.stop(grace_s=5), timeout=120)
