"""Grounding models: the RAM tagger (tags for the detector prompt), Grounding DINO boxes, SAM masks."""
