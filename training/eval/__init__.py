"""Evaluation metrics on the synthetic world (`training.world`): plain data in, numbers out.

Model outputs are taken as plain data (answer strings; entities as dicts or `GroundedEntity` with a
label, an xyxy box and optionally a mask), so the same functions score the reference pipeline, the
served stack, or hand-written cases.

    parsing.py    parse_mentions(text)                  objects named in a text: kind, count, color, negation
                  parse_position, sentences, split_pair_answer
    text.py       score_text(text, scene)               captions / descriptions: hallucinated or missed kinds, wrong colors and counts
                  score_answer(answer, qa_type, facts)  one question of the world (what / count / color / where / exists)
    audio.py      score_audio(text, sound)              the sound's kind and number of events
    pairs.py      classify_relation(text)               "related" | "unrelated" | None; relation_accuracy(...)
                  score_source_answer(answer, source)   names the right object (kind, color, place) as the sound's source
    grounding.py  box_iou, mask_iou, greedy_match       IoU and greedy one-to-one matching (no Hungarian)
                  score_grounding(entities, truth)      precision / recall / F1 at an IoU threshold, mean box and mask IoU
                  localisation_hit(entities, source)    the grounded object of the sound's kind overlaps the source
    aggregate.py  evaluate(items, predictions)          all of the above over eval/items.jsonl of a world corpus
                  print_table(metrics)                  a rich table (also returned as text)

    python -m training.eval --items data/world_eval/eval/items.jsonl --predictions preds.jsonl
    python -m training.eval --items data/world_eval/eval/items.jsonl --reference    # the truth scores 1.0

predictions.jsonl: one `{"id": ..., "answer": "...", "entities": [{"label", "box_xyxy", "mask"?}]}` a line.
"""

from training.eval.aggregate import (
    Metric,
    Metrics,
    evaluate,
    format_table,
    main,
    print_table,
    reference_predictions,
)
from training.eval.audio import SOUND_WORDS, AudioScore, parse_sound, score_audio
from training.eval.grounding import (
    Entity,
    GroundingScore,
    as_entity,
    box_iou,
    greedy_match,
    label_kind,
    localisation_hit,
    mask_iou,
    score_grounding,
    truth_entities,
)
from training.eval.pairs import (
    SourceScore,
    classify_relation,
    relation_accuracy,
    score_source_answer,
)
from training.eval.parsing import (
    QUANTITIES,
    Mention,
    parse_mentions,
    parse_position,
    parse_quantity,
    sentences,
    split_pair_answer,
)
from training.eval.text import (
    TextScore,
    answer_colors,
    answer_count,
    answer_yes_no,
    score_answer,
    score_text,
)

__all__ = [
    "QUANTITIES", "SOUND_WORDS", "AudioScore", "Entity", "GroundingScore", "Mention", "Metric", "Metrics",
    "SourceScore", "TextScore", "answer_colors", "answer_count", "answer_yes_no", "as_entity", "box_iou",
    "classify_relation", "evaluate", "format_table", "greedy_match", "label_kind", "localisation_hit", "main",
    "mask_iou", "parse_mentions", "parse_position", "parse_quantity", "parse_sound", "print_table",
    "reference_predictions", "relation_accuracy", "score_answer", "score_audio", "score_grounding",
    "score_source_answer", "score_text", "sentences", "split_pair_answer", "truth_entities",
]
