"""A small LLaMA-style tokenizer for the `nano` model, built offline and deterministically.

SentencePiece-like layout (ids 0/1/2 = <unk>/<s>/</s>, 256 byte-fallback tokens, then BPE pieces
with the "▁" word marker), so every text round-trips and the ids look like Vicuna's to every
consumer (HF, vLLM). The BPE pieces are learnt from a fixed corpus below.
"""

from __future__ import annotations

import json
from pathlib import Path

from bubogpt.prompt import SYSTEM_TEXT

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))

# What the nano model talks about: the prompt template, and plain descriptions of scenes and sounds.
CORPUS = [
    SYSTEM_TEXT,
    "###Human: <Vision></Vision> <Audio></Audio> Describe this image in detail.###Assistant: ",
    "###Human: What is the audio and the image?###Assistant: The image shows a dog. The audio is a bell.###",
    "Please describe the image and audio respectively. Are the audio and image related to each other?",
    "Take a look at this image and describe what you notice. Could you describe the contents of this image for me?",
    "In the image there are two black swans swimming in the water. Each swan has a red beak.",
    "A red ball lies on the green grass next to a small white cat. The sky is blue and the sun is bright.",
    "The audio is the sound of a bell ringing, a dog barking, birds singing and a car horn in the street.",
    "A man is riding a bicycle on the road. A woman is walking with a yellow umbrella in the rain.",
    "There is a wooden table with a cup, a plate and an apple. A lamp stands in the corner of the room.",
    "The picture shows a circle, a square and a triangle in different colors: red, green, blue, yellow.",
    "I hear music, speech, water, wind and footsteps. The sound is loud, then quiet, then it stops.",
    "They are not related: the image shows a tree, while the audio is a phone ringing.",
    "Yes, they are related. The bird in the image is singing, which is what we hear in the audio.",
    "one two three four five six seven eight nine ten. left right top bottom center big small large tiny.",
    "Hello! How can I help you? Sorry, I cannot see that. Is there anything else you would like to know?",
]


def build_tokenizer(vocab_size: int = 1024, corpus: list[str] | None = None):
    """Returns a transformers PreTrainedTokenizerFast with exactly `vocab_size` tokens.

    `corpus` replaces the built-in CORPUS (the trained nano default learns its pieces from the
    synthetic world's language, training.nano.language.tokenizer_corpus).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    num_pieces = vocab_size - len(SPECIAL_TOKENS) - len(BYTE_TOKENS)
    if num_pieces <= 0:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for BPE pieces")

    def configure(tok: Tokenizer) -> None:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )

    # 1. learn the pieces (characters + merges) from the corpus
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    configure(learner)
    trainer = trainers.BpeTrainer(vocab_size=num_pieces, special_tokens=[], show_progress=False)
    learner.train_from_iterator(CORPUS if corpus is None else corpus, trainer=trainer)
    learnt = json.loads(learner.to_str())["model"]
    pieces = sorted(learnt["vocab"].items(), key=lambda item: item[1])
    if len(pieces) > num_pieces:
        raise RuntimeError(f"BPE learnt {len(pieces)} pieces, expected at most {num_pieces}")
    # A small corpus runs out of merges: the rest of the vocabulary is reserved (never produced).
    pieces += [(f"<reserved{i}>", 0) for i in range(num_pieces - len(pieces))]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]

    # 2. lay out the final vocabulary like LLaMA's: specials, bytes, pieces
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + BYTE_TOKENS)}
    for piece, _ in pieces:
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    configure(tok)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, expected {vocab_size}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer, path: str | Path) -> None:
    tokenizer.save_pretrained(str(path))


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
