"""Instruction pools of BuboGPT's training, as in the official `prompts/*.txt` and dataset code.

The official files carry the modality tags (`<Vision><ModalityHere></Vision> Describe ...`); here they
hold only the instruction text, because `bubogpt.prompt.build_prompt` places the tags itself (in the
order the training config asks for), the same way the served prompt is built.
"""

from __future__ import annotations

# prompts/alignment.txt: MiniGPT-4's aligned image-text set (stage 2 picks one per sample)
IMAGE = (
    "Describe this image in detail.",
    "Take a look at this image and describe what you notice.",
    "Please provide a detailed description of the picture.",
    "Could you describe the contents of this image for me?",
)

# prompts/alignment_audio.txt: Clotho-Detail
AUDIO = (
    "Describe this audio in detail.",
    "Pay attention to this audio and describe what you notice.",
    "Please provide a detailed description of the sound.",
    "Could you describe the contents of this audio for me?",
)

# prompts/alignment_audio_image_region.txt: VGGSS (aligned image-audio pairs: where is the sound source)
AUDIO_IMAGE = (
    "Please find the source that emits the given sound in this image.",
    "Pay attention to the given audio and image, and tell me where is the sound coming from in this picture.",
    "Which part of this scene is the source of the given sound?",
)

# prompts/alignment_audio_image_neg.txt: negative (unrelated) image-audio pairs
NEGATIVE = (
    "Please describe the image and audio respectively.",
    "What is the audio and the image?",
    "Please provide a detailed description of the sound and the image.",
    "Could you tell the contents of this audio and photo for me?",
    "Are the audio and image related to each other? What are they?",
)

# The official AudioImageNegDataset: this prefix always when the instruction asks whether the two are
# related, otherwise with probability 0.5; then the image caption, then the audio caption.
UNRELATED_STATEMENT = "They seem unrelated."

# llava_dataset.py wraps each LLaVA question in one of these (typo "Quesion" of the original fixed).
LLAVA_TEMPLATES = (
    "{question}",
    "Question: {question}",
    "{question} A detail answer to the question is",
    "Question: {question} detail answer:",
    "Based on the image, respond to this question with a detail answer: {question} Answer:",
    "Use the provided image to answer the question: {question}",
    "What is the answer to the following question? {question}",
)

# Default instruction pool per modality set, for samples that carry no instruction of their own.
POOLS: dict[frozenset[str], tuple[str, ...]] = {
    frozenset({"image"}): IMAGE,
    frozenset({"audio"}): AUDIO,
    frozenset({"image", "audio"}): AUDIO_IMAGE,
}
