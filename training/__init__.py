"""BuboGPT training: dataset readers, negative pairs, stage 1 / stage 2 loops and exports.

Kept apart from serving: `bubogpt/`, `serving/` and `export/` never import this package; this package
imports the model library (`bubogpt/`). Entry point: `bubo train stage1|stage2 --config FILE`
(`training.cli.add_train_parser`).
"""
