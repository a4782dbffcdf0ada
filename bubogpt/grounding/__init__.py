"""Grounding models: the RAM tagger (tags for the detector prompt), Grounding DINO boxes, SAM masks.

    swin.py            Swin Transformer layers shared by RAM's Swin-L and Grounding DINO's Swin-T
    ram/               RAM tagger: config, backbone, tagging head, tagger, transforms, tags, checkpoint
    grounding_dino/    Grounding DINO: config, backbone, text encoder, transformer, model, pre/post-processing,
                       checkpoint
    sam/               SAM for box prompts: config, image encoder, prompt encoder, two-way transformer,
                       mask decoder, transforms, checkpoint
    matching/          which words of the answer name which grounded entity (rule and LLM matchers)
    pipeline.py        tagger -> detector -> SAM for one image; schema.py, rle.py, overlay.py: its results
"""
