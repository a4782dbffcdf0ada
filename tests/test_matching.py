"""Entity matching: the deterministic rule matcher and the LLM matcher's prompt, parser, fallback."""

import asyncio
import logging

import pytest

from bubogpt.grounding.matching import (
    EntityMatcher,
    LLMEntityMatcher,
    RuleEntityMatcher,
    build_match_prompt,
    normalize_label,
    parse_match_reply,
)
from bubogpt.grounding.schema import EntityMatch

SWANS = "In the image, there are two black swans swimming in the water. One of the swans has a red beak."
SWAN_ENTITIES = ["swan", "water", "beak"]


def spans(matches):
    return [(m.phrase, m.start, m.end, m.entity_index, m.label) for m in matches]


def phrases(matches):
    return [(m.phrase, m.label) for m in matches]


def check_well_formed(answer, matches):
    """Every span is exact, sorted and disjoint."""
    for m in matches:
        assert answer[m.start : m.end] == m.phrase
    for a, b in zip(matches, matches[1:]):
        assert a.end <= b.start


@pytest.fixture(scope="module")
def rule():
    return RuleEntityMatcher()


# --- rule matcher ---------------------------------------------------------------------------


def test_rule_paper_swans(rule):
    matches = rule.match(SWANS, SWAN_ENTITIES)
    # Numerals and adjectives join the noun; articles ("the water") do not.
    assert spans(matches) == [
        ("two black swans", 24, 39, 0, "swan"),
        ("water", 56, 61, 1, "water"),
        ("swans", 74, 79, 0, "swan"),
        ("red beak", 86, 94, 2, "beak"),
    ]
    assert isinstance(rule, EntityMatcher)


@pytest.mark.parametrize(
    ("answer", "entities", "expected"),
    [
        (
            "Three mice sit next to some boxes while two children and several people watch; leaves cover the ground.",
            ["mouse", "box", "child", "person", "leaf"],
            [("Three mice", "mouse"), ("boxes", "box"), ("two children", "child"),
             ("several people", "person"), ("leaves", "leaf")],
        ),
        # plural labels match singular mentions too
        ("A swan glides by.", ["swans"], [("swan", "swans")]),
        ("Two wolves and some knives.", ["wolf", "knife"], [("Two wolves", "wolf"), ("knives", "knife")]),
    ],
)
def test_rule_plurals(rule, answer, entities, expected):
    matches = rule.match(answer, entities)
    check_well_formed(answer, matches)
    assert phrases(matches) == expected


@pytest.mark.parametrize(
    ("answer", "entities", "expected"),
    [
        ("A fluffy puppy chases a kitten past an old automobile.", ["dog", "cat", "car"],
         [("fluffy puppy", "dog"), ("kitten", "cat"), ("old automobile", "car")]),
        # hypernym entity, more specific mention
        ("Two ducks and a swan float on the lake.", ["bird", "water"],
         [("Two ducks", "bird"), ("swan", "bird"), ("lake", "water")]),
        ("A man and a woman walk with a little girl.", ["person"],
         [("man", "person"), ("woman", "person"), ("little girl", "person")]),
        # the exact name beats the hypernym
        ("A swan and a duck.", ["bird", "swan"], [("swan", "swan"), ("duck", "bird")]),
        # not the other way round: a "bird" mention is not taken for the more specific "swan"
        ("A bird flies over.", ["swan"], []),
        # adjacent mentions of one entity merge into one phrase
        ("Tall palm trees line the beach.", ["tree", "beach"], [("Tall palm trees", "tree"), ("beach", "beach")]),
    ],
)
def test_rule_synonyms_and_hypernyms(rule, answer, entities, expected):
    matches = rule.match(answer, entities)
    check_well_formed(answer, matches)
    assert phrases(matches) == expected


def test_rule_multi_word(rule):
    answer = "Cars wait at the traffic lights; a light shines on a black-and-white dog in a T-shirt."
    matches = rule.match(answer, ["traffic light", "car", "dog", "t shirt"])
    check_well_formed(answer, matches)
    # Longest phrase wins; "light" alone is no mention of "traffic light".
    assert phrases(matches) == [
        ("Cars", "car"),
        ("traffic lights", "traffic light"),
        ("black-and-white dog", "dog"),
        ("T-shirt", "t shirt"),
    ]
    assert spans(rule.match("The traffic lights.", ["light", "traffic light"])) == [
        ("traffic lights", 4, 18, 1, "traffic light")
    ]
    # a multi-word label of adjective + noun also answers to the noun, unless the colour clashes
    assert phrases(rule.match("Two black swans and a white swan.", ["black swan"])) == [("Two black swans", "black swan")]
    assert phrases(rule.match("A swan.", ["black swan"])) == [("swan", "black swan")]


@pytest.mark.parametrize(
    ("answer", "entities"),
    [
        ("A swanky hotel with a catwalk and a doghouse.", ["swan", "cat", "dog"]),
        ("He eats a hot dog next to a teddy bear.", ["dog", "bear"]),
        ("Nothing here.", ["swan"]),
        ("", ["swan"]),
        ("A swan.", []),
    ],
)
def test_rule_no_false_matches(rule, answer, entities):
    assert rule.match(answer, entities) == []


def test_rule_details(rule):
    # possessives do not widen the span; the water of a "water bottle" is no water
    assert phrases(rule.match("The swan's beak.", ["swan", "beak"])) == [("swan", "swan"), ("beak", "beak")]
    assert phrases(rule.match("A water bottle.", ["water", "bottle"])) == [("bottle", "bottle")]
    # duplicate labels: the first entry stands for all
    assert spans(rule.match("A swan.", ["Swan", "swan", "water"])) == [("swan", 2, 6, 0, "Swan")]
    # modifiers can be switched off
    assert phrases(RuleEntityMatcher(include_modifiers=False).match(SWANS, SWAN_ENTITIES))[0] == ("swans", "swan")
    # user-supplied table entries
    custom = RuleEntityMatcher(synonyms=[("sofa", "settee")], hyponyms={"toy": ["yo-yo"]})
    assert phrases(custom.match("A red yo-yo on the settee.", ["toy", "sofa"])) == [("red yo-yo", "toy"), ("settee", "sofa")]


def test_normalize_label():
    assert normalize_label("  The  Traffic-Light. ") == "traffic-light"
    assert normalize_label("a swan") == "swan"


# --- LLM matcher: prompt ----------------------------------------------------------------------


def test_prompt_has_list_text_and_examples():
    prompt = build_match_prompt(SWANS, SWAN_ENTITIES)
    assert prompt.endswith(f"<List>swan, water, beak</List><Text>{SWANS}</Text>\n")
    # few-shot examples precede the question, each with its answer lines
    assert prompt.count("<List>") == 5
    assert "two striped pillows - pillow" in prompt
    assert "span - name" in prompt
    # commas inside a label cannot break the list
    assert "<List>a b, c</List>" in build_match_prompt("x", ["a,b", "c"])


# --- LLM matcher: parser ----------------------------------------------------------------------


def test_parser_paper_swans():
    reply = "two black swans - swan\nwater - water\nswans - swan\nred beak - beak"
    assert spans(parse_match_reply(reply, SWANS, SWAN_ENTITIES)) == [
        ("two black swans", 24, 39, 0, "swan"),
        ("water", 56, 61, 1, "water"),
        ("swans", 74, 79, 0, "swan"),
        ("red beak", 86, 94, 2, "beak"),
    ]


def test_parser_longer_spans_are_placed_first():
    # "swans" listed first still leaves the first mention to "two black swans"
    reply = "swans - swan\ntwo black swans - swan"
    assert phrases(parse_match_reply(reply, SWANS, SWAN_ENTITIES)) == [("two black swans", "swan"), ("swans", "swan")]
    assert [m.start for m in parse_match_reply(reply, SWANS, SWAN_ENTITIES)] == [24, 74]


def test_parser_drops_what_it_cannot_verify():
    reply = "\n".join(
        [
            "Sure! Here are the pairs:",  # chatter
            "giraffe - giraffe",  # entity not in the list
            "purple lake - water",  # span not in the text
            "water: water",  # wrong separator
            "  - swim - ",  # nothing on either side
            "1. Two Black Swans \u2014 SWAN.",  # numbered, em dash, other case: kept
            "* 'beak' - \"beak\"",  # bullet and quotes: kept
            "beak - water",  # same span already linked to another entity
            "swan - swan",  # whole words only: lands on "swan", not in "swans" or "swanky"
        ]
    )
    answer = "Two black swans near a swanky hotel; the red beak of a swan."
    matches = parse_match_reply(reply, answer, ["swan", "water", "beak"])
    check_well_formed(answer, matches)
    assert spans(matches) == [
        ("Two black swans", 0, 15, 0, "swan"),
        ("beak", 45, 49, 2, "beak"),
        ("swan", 55, 59, 0, "swan"),
    ]


def test_parser_span_whitespace_and_plural_names():
    answer = "There are two  black\nswans."
    matches = parse_match_reply("two black swans - Swans", answer, ["swan"])
    assert spans(matches) == [("two  black\nswans", 10, 26, 0, "swan")]
    assert parse_match_reply("", answer, ["swan"]) == []


# --- LLM matcher: calling and fallback ----------------------------------------------------------


def test_llm_matcher_uses_reply():
    prompts = []

    def complete(prompt):
        prompts.append(prompt)
        return "two black swans - swan\nwater - water\nred beak - beak\n"

    matches = LLMEntityMatcher(complete).match(SWANS, SWAN_ENTITIES)
    assert prompts == [build_match_prompt(SWANS, SWAN_ENTITIES)]
    # the LLM's choice of mentions is kept as is (it linked the first "swans" only)
    assert phrases(matches) == [("two black swans", "swan"), ("water", "water"), ("red beak", "beak")]


@pytest.mark.parametrize(
    "complete",
    [
        lambda prompt: "",
        lambda prompt: "NONE",
        lambda prompt: "I cannot help with that.\ngiraffe - giraffe",
        lambda prompt: None,
        lambda prompt: 1 / 0,
    ],
    ids=["empty", "none", "junk", "not-a-string", "raises"],
)
def test_llm_matcher_falls_back(complete, caplog):
    with caplog.at_level(logging.INFO, logger="bubogpt.grounding.matching"):
        matches = LLMEntityMatcher(complete).match(SWANS, SWAN_ENTITIES)
    assert matches == RuleEntityMatcher().match(SWANS, SWAN_ENTITIES)
    assert any("rule matcher" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def test_llm_matcher_skips_call_without_entities():
    def complete(prompt):
        raise AssertionError("must not be called")

    assert LLMEntityMatcher(complete).match(SWANS, []) == []
    assert LLMEntityMatcher(complete).match("  ", ["swan"]) == []


def test_llm_matcher_async_completion():
    async def complete(prompt):
        await asyncio.sleep(0)
        return "red beak - beak"

    matcher = LLMEntityMatcher(complete)
    expected = [EntityMatch("red beak", 86, 94, 2, "beak")]
    assert asyncio.run(matcher.amatch(SWANS, SWAN_ENTITIES)) == expected
    # outside an event loop the sync entry point runs the coroutine itself
    assert matcher.match(SWANS, SWAN_ENTITIES) == expected

    async def failing(prompt):
        raise RuntimeError("engine stopped")

    assert asyncio.run(LLMEntityMatcher(failing).amatch(SWANS, SWAN_ENTITIES)) == RuleEntityMatcher().match(
        SWANS, SWAN_ENTITIES
    )


def test_llm_matcher_sync_completion_from_async_code():
    matcher = LLMEntityMatcher(lambda prompt: "water - water")
    assert phrases(asyncio.run(matcher.amatch(SWANS, SWAN_ENTITIES))) == [("water", "water")]
    # the rule matcher has the async form too
    assert asyncio.run(RuleEntityMatcher().amatch(SWANS, SWAN_ENTITIES)) == RuleEntityMatcher().match(SWANS, SWAN_ENTITIES)


def test_llm_matcher_async_completion_inside_loop_needs_amatch():
    async def complete(prompt):
        return "water - water"

    async def misuse():
        return LLMEntityMatcher(complete).match(SWANS, SWAN_ENTITIES)

    with pytest.raises(RuntimeError, match="amatch"):
        asyncio.run(misuse())
