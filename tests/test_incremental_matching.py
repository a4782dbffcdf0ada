"""Matching while the answer is written: over a whole answer, fed piece by piece, the incremental matcher
returns exactly the complete-answer matches, each with its final span, most of them before the end."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bubogpt.grounding.matching import RuleEntityMatcher
from bubogpt.grounding.matching.incremental import IncrementalMatcher

LABELS = ["ball", "bird", "boat", "car", "cat", "dog", "flower", "tree", "traffic light", "black swan", "white swan",
          "hot dog", "pineapple", "sea lion", "person", "t-shirt", "animal"]
# nouns, plurals, modifiers (colours, numerals, sizes), compounds, synonyms and hyponyms of the labels,
# a key spelt as two words ("pine apple"), hyphenated words and plain words
WORDS = ["ball", "balls", "bird", "birds", "boat", "car", "cars", "cat", "dog", "dogs", "flower", "tree", "trees",
         "traffic", "light", "lights", "black", "white", "swan", "swans", "hot", "sea", "lion", "lions", "red", "two",
         "3", "small", "big", "the", "a", "and", "is", "there", "on", "left", "of", "near", "water", "palm", "wild",
         "sky", "green", "pine", "apple", "pineapple", "people", "man", "t-shirt", "t", "shirt", "puppy", "horse",
         "black-and-white", "hot-dog", "dog-house"]
PUNCTUATION = [" ", " ", " ", " ", "  ", ", ", ". ", "; ", "! ", "'s ", "-", " - ", "\n"]


@st.composite
def answers(draw):
    words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=60))
    seps = draw(st.lists(st.sampled_from(PUNCTUATION), min_size=len(words), max_size=len(words)))
    text = "".join(w + s for w, s in zip(words, seps)).rstrip()
    if draw(st.booleans()):
        text += "."
    return text


@st.composite
def pieces(draw, text):
    """The text cut into token-like pieces (1 to 6 characters)."""
    cuts, at = [], 0
    while at < len(text):
        at = min(len(text), at + draw(st.integers(1, 6)))  # vLLM hands out one or more tokens at a time
        cuts.append(at)
    return cuts


@settings(max_examples=1500, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_incremental_matches_are_the_complete_answers_matches(data):
    text = data.draw(answers())
    labels = data.draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=5, unique=True))
    matcher = RuleEntityMatcher()
    incremental = IncrementalMatcher(matcher, labels)
    returned = []
    for cut in data.draw(pieces(text)):
        for match in incremental.settled(text[:cut]):
            assert text[match.start : match.end] == match.phrase  # the span is already its final text
            returned.append(match)
    early = len(returned)
    returned += incremental.finish(text)
    key = lambda m: (m.phrase, m.start, m.end, m.entity_index)  # noqa: E731
    assert sorted(map(key, returned)) == sorted(map(key, matcher.match(text, labels)))
    assert len({(m.start, m.end) for m in returned}) == len(returned)  # each sent once
    assert early <= len(returned)


def follow(text, labels):
    """Feed `text` one character at a time; return the matches and the length of text each was sent at."""
    incremental = IncrementalMatcher(RuleEntityMatcher(), labels)
    sent = []
    for cut in range(1, len(text) + 1):
        sent += [(match, cut) for match in incremental.settled(text[:cut])]
    sent += [(match, len(text) + 1) for match in incremental.finish(text)]
    return sent


# each case needs one of the rules that keep a match open while later words could still change it
CASES = [
    ("two traffic lights traffic lights. ok", ["traffic light"]),  # the next word may start a mention that merges
    ("a dog big red small dog. ok", ["dog"]),  # modifiers before a second mention that merges
    ("the boat engine cover is red. ok", ["boat", "boat engine cover"]),  # the next words may continue the phrase
    ("a hot dog and a dog. ok", ["dog", "hot dog"]),  # "hot dog" is one thing, not a hot "dog"
    ("the dog-house and the dog. ok", ["dog", "dog-house"]),  # a hyphen at the end may join words
    ("a pine apple and a pine. ok", ["pineapple", "pine"]),  # a key spelt as two words
    ("the swan's wing and a black swan. ok", ["black swan"]),  # possessive; the head noun of a label
]


@pytest.mark.parametrize(("text", "labels"), CASES)
def test_no_match_goes_out_before_the_words_that_decide_it(text, labels):
    sent = follow(text, labels)
    full = RuleEntityMatcher().match(text, labels)
    assert sorted((m.start, m.end, m.entity_index) for m, _ in sent) == [(m.start, m.end, m.entity_index) for m in full]
    assert all(at <= len(text) for _, at in sent)  # and each before the answer ended


def test_a_match_goes_out_at_the_first_word_that_cannot_join_it():
    text = "a red ball on the left"
    (match, at), = follow(text, ["ball"])
    assert (match.phrase, text[:at]) == ("red ball", "a red ball on ")


def test_a_long_answer_gets_its_entities_before_it_ends():
    text = ("There is a red ball on the left, two small dogs near the water and a tall tree behind them. "
            "A black swan swims by the boat, and a cat sleeps under the tree.")
    labels = ["ball", "dog", "tree", "black swan", "boat", "cat"]
    incremental = IncrementalMatcher(RuleEntityMatcher(), labels)
    sent_at = {}
    for cut in range(1, len(text) + 1):
        for match in incremental.settled(text[:cut]):
            sent_at[(match.start, match.phrase)] = cut
    final = incremental.finish(text)
    full = RuleEntityMatcher().match(text, labels)
    assert {(m.start, m.phrase) for m in full} == set(sent_at) | {(m.start, m.phrase) for m in final}
    # every phrase but the last went out within a few words of its end, long before the answer ended
    for match in full[:-1]:
        assert sent_at[(match.start, match.phrase)] - match.end < 30, match
    assert len(final) <= 1
