import pytest
import torch

from bubogpt.prompt import (
    PLACEHOLDER,
    SYSTEM_TEXT,
    PromptError,
    Turn,
    build_prompt,
    layout_prompt,
    splice_embeddings,
    tokenize_segments,
    truncate_at_stop,
)
from bubogpt.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(1024)


def test_single_turn_with_both_modalities_matches_the_paper_template():
    prompt = build_prompt([Turn("user", "What do you see and hear?")], ["image", "audio"])
    assert prompt == (
        SYSTEM_TEXT
        + "###Human: <Vision><ModalityHere></Vision> <Audio><ModalityHere></Audio> What do you see and hear?###Assistant:"
    )


def test_multi_turn_keeps_answers_and_places_modalities_in_the_first_turn():
    turns = [Turn("user", "Describe the image."), Turn("assistant", "A dog on grass."), Turn("user", "What colour is it?")]
    prompt = build_prompt(turns, ["image"])
    assert prompt.endswith(
        "###Human: <Vision><ModalityHere></Vision> Describe the image.###Assistant: A dog on grass.###Human: What colour is it?###Assistant:"
    )
    assert prompt.count(PLACEHOLDER) == 1


def test_text_only_prompt_has_no_placeholder():
    assert PLACEHOLDER not in build_prompt([Turn("user", "hi")])


@pytest.mark.parametrize(
    "turns, modalities, field",
    [
        ([], [], "turns"),
        ([Turn("assistant", "x")], [], "turns[0].role"),
        ([Turn("user", "a"), Turn("assistant", "b")], [], "last turn"),
        ([Turn("user", "a ### b")], [], "turns[0].text"),
        ([Turn("user", "a <ModalityHere>")], [], "turns[0].text"),
        ([Turn("user", "a")], ["image", "image"], "modalities"),
        ([Turn("user", "a")], ["video"], "video"),
    ],
)
def test_bad_conversations_name_the_field(turns, modalities, field):
    with pytest.raises(PromptError, match=field.replace("[", r"\[").replace("]", r"\]")):
        build_prompt(turns, modalities)


def test_only_the_first_segment_gets_bos(tokenizer):
    prompt = build_prompt([Turn("user", "hello")], ["image", "audio"])
    segments = tokenize_segments(tokenizer, prompt)
    assert len(segments) == 3
    assert segments[0][0] == tokenizer.bos_token_id
    assert all(tokenizer.bos_token_id not in s for s in segments[1:])


def test_layout_and_splice_put_each_modality_in_its_slot(tokenizer):
    prompt = build_prompt([Turn("user", "hello")], ["image", "audio"])
    layout = layout_prompt(tokenizer, prompt, num_query_tokens=32)
    segments = tokenize_segments(tokenizer, prompt)
    assert len(layout) == sum(map(len, segments)) + 64
    assert [s for s, _ in layout.slots] == [len(segments[0]), len(segments[0]) + 32 + len(segments[1])]
    table = torch.nn.Embedding(len(tokenizer), 8)
    image, audio = torch.full((32, 8), 7.0), torch.full((32, 8), -3.0)
    embeds = splice_embeddings(layout, [image, audio], table)
    (i0, _), (a0, _) = layout.slots
    assert torch.equal(embeds[i0 : i0 + 32], image)
    assert torch.equal(embeds[a0 : a0 + 32], audio)
    text_rows = torch.tensor(layout.is_text)
    assert torch.equal(embeds[text_rows], table(torch.tensor(layout.token_ids))[text_rows])
    with pytest.raises(PromptError, match="2 modality slots but 1"):
        splice_embeddings(layout, [image], table)
    with pytest.raises(PromptError, match=r"\[32, 8\]"):
        splice_embeddings(layout, [image, torch.zeros(31, 8)], table)


def test_truncate_at_stop():
    assert truncate_at_stop("A dog.###Human") == ("A dog.", True)
    assert truncate_at_stop("A dog.") == ("A dog.", False)


def test_tokenizer_is_deterministic_and_round_trips(tokenizer):
    again = build_tokenizer(1024)
    assert tokenizer.backend_tokenizer.to_str() == again.backend_tokenizer.to_str()
    text = "Two black swans ### naïve 你好 \n\t end"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) == 1024
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
