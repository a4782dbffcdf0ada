"""`bubo train nano`: trains every part of the built-in `nano` model on the synthetic world.

    sketch.py        what the LLM reads in a modality slot while it learns the world's language
    language.py      the world tokenizer and the LLM's pre-training (then frozen, as Vicuna is)
    encoders.py      vision encoder + Q-Former and audio encoder + Q-Former, supervised by scene truth
    pipeline.py      the whole recipe: corpus -> tokenizer -> LLM -> encoders -> stage 1 -> stage 2
                     (+ the grounding nets in a parallel lane) -> a model directory + report
    evaluate.py      `bubo eval`: answers and grounding of a model on held-out world seeds
"""
