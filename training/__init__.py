"""BuboGPT training: dataset readers, negative pairs, stage 1 / stage 2 loops and exports.

Kept apart from serving: `bubogpt/`, `serving/` and `export/` never import this package, and it imports
neither `serving` nor `benchmarks` (the import contracts in pyproject.toml); it builds on the model
library (`bubogpt/`). Entry point: `bubo train stage1|stage2|nano` (`training/commands.py`).
"""
