"""The decode loop, sampling and the streaming detokenizer, without any server."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bubogpt.decode import decode_tokens, sample_token
from bubogpt.defaults import default_model_dir
from bubogpt.prompt import STOP_STRING, truncate_at_stop
from bubogpt.tokenizer import load_tokenizer
from serving.llm_engine import StopStringStream


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_model_dir() / "llm")


@pytest.fixture(scope="module")
def llm():
    from bubogpt.llm import load_llm

    return load_llm(default_model_dir() / "llm")


def draws(logits, temperature, top_p=1.0, n=2000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros(len(logits))
    for _ in range(n):
        counts[sample_token(torch.tensor(logits), temperature, top_p, generator)] += 1
    return counts / n


def test_temperature_zero_is_argmax():
    assert sample_token(torch.tensor([0.1, 3.0, -2.0, 2.9])) == 1


def test_temperature_shapes_the_distribution():
    logits = [2.0, 1.0, 0.0]
    cold, warm, hot = draws(logits, 0.5), draws(logits, 1.0), draws(logits, 4.0)
    assert cold[0] > warm[0] > hot[0]  # lower temperature concentrates on the top token
    expected = torch.softmax(torch.tensor(logits), 0)
    assert torch.allclose(warm, expected, atol=0.04)  # T = 1 follows softmax(logits)


def test_top_p_keeps_the_nucleus_only():
    logits = [3.0, 2.0, -1.0, -1.0]  # softmax ~ 0.72, 0.26, 0.01, 0.01
    frequencies = draws(logits, 1.0, top_p=0.9)
    assert frequencies[2] == 0 and frequencies[3] == 0 and frequencies[1] > 0.2
    assert (draws(logits, 1.0, top_p=0.5)[1:] == 0).all()  # the top token alone reaches 0.5


def test_seeds_reproduce_and_differ():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1)).tolist()
    assert torch.equal(draws(logits, 1.0, n=200, seed=5), draws(logits, 1.0, n=200, seed=5))
    assert not torch.equal(draws(logits, 1.0, n=200, seed=5), draws(logits, 1.0, n=200, seed=6))


def test_decode_loop_greedy_equals_generate_and_sampling_is_seeded(llm, tokenizer):
    ids = torch.tensor(tokenizer.encode("###Human: What is in the picture? ###Assistant:"))
    embeds = llm.get_input_embeddings()(ids)
    greedy = list(decode_tokens(llm, embeds, 12))
    with torch.inference_mode():
        reference = llm.generate(ids[None], max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):]
    assert greedy == reference.tolist()
    first = list(decode_tokens(llm, embeds, 12, temperature=1.5, seed=3))
    assert first == list(decode_tokens(llm, embeds, 12, temperature=1.5, seed=3))
    assert first != greedy or first != list(decode_tokens(llm, embeds, 12, temperature=1.5, seed=4))
    eos = greedy[3]
    stopped = list(decode_tokens(llm, embeds, 12, eos_token_id=eos))
    assert stopped == greedy[: greedy.index(eos) + 1]  # the end-of-sequence token is the last one yielded


def push_all(stream, ids):
    deltas, stopped = [], False
    for token_id in ids:
        delta, stopped = stream.push(token_id)
        deltas.append(delta)
        if stopped:
            break
    return deltas, stopped


def test_stop_string_stream_never_takes_text_back(tokenizer):
    ids = tokenizer.encode("There is a red ball. ### Human: next", add_special_tokens=False)
    stream = StopStringStream(tokenizer)
    deltas, stopped = push_all(stream, ids)
    assert stopped and STOP_STRING not in "".join(deltas)
    assert "".join(deltas) == stream.text == tokenizer.decode(ids, skip_special_tokens=True).split(STOP_STRING)[0]


def test_a_partial_stop_string_is_held_back_until_settled(tokenizer):
    ids = tokenizer.encode("a cat#", add_special_tokens=False)  # ends with "#": may become "###"
    stream = StopStringStream(tokenizer)
    deltas, stopped = push_all(stream, ids)
    assert not stopped and not "".join(deltas).endswith("#")
    tail = stream.flush()  # the answer ended: the held "#" is text after all
    assert "".join(deltas) + tail == tokenizer.decode(ids, skip_special_tokens=True)


def test_byte_fallback_runs_are_emitted_whole(tokenizer):
    text = "héllo 日本"
    ids = tokenizer.encode(text, add_special_tokens=False)
    stream = StopStringStream(tokenizer)
    deltas, _ = push_all(stream, ids)
    deltas.append(stream.flush())
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in d for d in deltas), deltas  # never half a UTF-8 sequence


def test_the_callers_stop_strings_cut_the_answer_too(tokenizer):
    ids = tokenizer.encode("There is a red ball. And a cat.", add_special_tokens=False)
    stream = StopStringStream(tokenizer, stops=(STOP_STRING, "ball"))
    deltas, stopped = push_all(stream, ids)
    assert stopped and "".join(deltas) == stream.text == "There is a red "


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(text=st.text(alphabet="abcdefghij klm.,#!?'-\n", min_size=1, max_size=80), data=st.data(),
       stops=st.sampled_from([(STOP_STRING,), (STOP_STRING, "ab"), (STOP_STRING, "#!")]))
def test_stop_strings_count_only_after_min_tokens(tokenizer, text, data, stops):
    """vLLM's min_tokens: a stop string within the first `min_tokens` tokens' text is answer text; one that
    begins in their last characters and ends after them, or any later one, stops the stream."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    min_tokens = data.draw(st.integers(0, len(ids) + 1))
    stream = StopStringStream(tokenizer, stops, min_tokens=min_tokens)
    deltas, stopped = push_all(stream, ids)
    if not stopped:
        deltas.append(stream.flush())
    full = tokenizer.decode(ids, skip_special_tokens=True)
    if len(ids) <= min_tokens:
        want = full
    else:
        early = tokenizer.decode(ids[:min_tokens], skip_special_tokens=True) if min_tokens else ""
        begin = max(0, len(early) - max(len(stop) for stop in stops) + 1)
        want = full[:begin] + truncate_at_stop(full[begin:], stops)[0]
    assert "".join(deltas) == stream.text == want


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(text=st.text(alphabet="abcdefghij klm.,#!?'-\néü日本語🙂", min_size=1, max_size=80),
       stops=st.sampled_from([(STOP_STRING,), (STOP_STRING, "ab"), (STOP_STRING, "#!", "日本")]))
def test_the_stream_is_the_decode_cut_at_the_first_stop(tokenizer, text, stops):
    ids = tokenizer.encode(text, add_special_tokens=False)
    stream = StopStringStream(tokenizer, stops)
    deltas, stopped = push_all(stream, ids)
    if not stopped:
        deltas.append(stream.flush())
    want, _ = truncate_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stops)
    assert "".join(deltas) == stream.text == want
    for end in range(1, len(deltas)):  # what was emitted is never text a stop string begins in
        assert not any(stop in "".join(deltas[:end]) for stop in stops)


class CountingTokenizer:
    """The tokenizer, counting the token ids it is asked to decode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decoded = tokenizer, 0

    def decode(self, ids, **kwargs):
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, **kwargs)

    def get_vocab(self):
        return self.tokenizer.get_vocab()


def test_the_stream_decodes_a_bounded_window_per_token(tokenizer):
    """Per token, the work does not grow with the answer: a 4x longer answer decodes ~4x the ids."""
    ids = tokenizer.encode("There is a red ball on the left, two small dogs near the water. " * 40, add_special_tokens=False)
    work = {}
    for n in (100, 400):
        counting = CountingTokenizer(tokenizer)
        stream = StopStringStream(counting)
        push_all(stream, ids[:n])
        assert stream.text == tokenizer.decode(ids[:n], skip_special_tokens=True)[: len(stream.text)]
        work[n] = counting.decoded / n
    assert work[400] <= work[100] * 1.1 and work[100] <= 2 * (StopStringStream.CONTEXT + 2)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(text=st.text(alphabet="abcdefghij klm.,#!?'-\néü日本語🙂", min_size=1, max_size=80), data=st.data())
def test_the_long_answer_benchmarks_before_stream_says_the_same(tokenizer, text, data):
    """benchmarks.long_answers compares the frontend's stream with one that decodes the whole answer at every
    token: the two must differ in cost only."""
    from benchmarks.long_answers import FullDecodeStream

    ids = tokenizer.encode(text, add_special_tokens=False)
    min_tokens = data.draw(st.integers(0, len(ids)))
    outputs = []
    for make in (StopStringStream, FullDecodeStream):
        stream = make(tokenizer, (STOP_STRING, "ab"), min_tokens=min_tokens)
        deltas, stopped = push_all(stream, ids)
        outputs.append(("".join(deltas) + ("" if stopped else stream.flush()), stopped))
    assert outputs[0] == outputs[1]
