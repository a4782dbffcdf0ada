"""The rule matcher's built-in lexicon: synonyms, hypernyms, compounds and the modifier word lists."""

from __future__ import annotations

from collections.abc import Mapping

from bubogpt.grounding.matching.words import squash

# Groups of words for the same thing (matched both ways). Singular lemmas.
DEFAULT_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("dog", "puppy", "pup", "doggy"),
    ("cat", "kitten", "kitty"),
    ("car", "automobile"),
    ("person", "human"),
    ("man", "guy", "gentleman"),
    ("woman", "lady"),
    ("child", "kid"),
    ("baby", "infant"),
    ("bicycle", "bike"),
    ("motorcycle", "motorbike"),
    ("truck", "lorry"),
    ("airplane", "aeroplane", "plane", "aircraft"),
    ("television", "tv"),
    ("sofa", "couch"),
    ("phone", "cellphone", "cell phone", "mobile phone", "smartphone", "telephone"),
    ("refrigerator", "fridge"),
    ("cup", "mug"),
    ("glasses", "eyeglasses", "spectacles"),
    ("trash can", "garbage can", "trash bin", "dustbin"),
    ("pants", "trousers"),
    ("rabbit", "bunny"),
    ("cow", "cattle"),
    ("sea", "ocean"),
    ("rock", "stone", "boulder"),
    ("road", "street"),
    ("grass", "lawn"),
    ("field", "meadow", "pasture"),
    ("drink", "beverage"),
)

# Hypernym -> more specific words. An entity matches a mention of a more specific kind
# ("bird" entity, "swans" in the answer), not the other way round: the tagger's tag for an
# object is usually the general word, and "animals" in an answer could be any of several.
DEFAULT_HYPONYMS: Mapping[str, tuple[str, ...]] = {
    "person": (
        "man", "woman", "boy", "girl", "child", "baby", "adult", "teenager", "player",
        "pedestrian", "rider", "skier", "surfer", "skateboarder", "snowboarder", "cyclist",
        "biker", "athlete", "tourist", "worker", "chef", "policeman", "police officer",
        "soldier", "student", "farmer",
    ),
    "child": ("boy", "girl", "toddler"),
    "bird": (
        "swan", "duck", "goose", "sparrow", "pigeon", "dove", "parrot", "eagle", "hawk", "owl",
        "seagull", "gull", "crow", "robin", "penguin", "flamingo", "pelican", "heron", "hen",
        "rooster", "finch", "woodpecker", "hummingbird", "ostrich", "duckling",
    ),
    "animal": (
        "dog", "cat", "horse", "cow", "sheep", "goat", "pig", "elephant", "giraffe", "zebra",
        "bear", "lion", "tiger", "deer", "monkey", "rabbit", "bird", "fox", "wolf", "squirrel",
        "mouse",
    ),
    "dog": (
        "corgi", "poodle", "retriever", "labrador", "terrier", "sheepdog", "bulldog", "husky",
        "german shepherd", "beagle", "dachshund", "chihuahua", "pug", "collie",
    ),
    "horse": ("pony", "foal", "stallion", "mare"),
    "sheep": ("lamb",),
    "pig": ("piglet", "hog"),
    "duck": ("duckling",),
    "chicken": ("hen", "rooster", "chick"),
    "water": ("lake", "river", "sea", "ocean", "pond", "stream", "creek", "canal", "bay", "lagoon"),
    "vehicle": (
        "car", "truck", "bus", "van", "motorcycle", "taxi", "jeep", "suv", "tractor", "ambulance",
    ),
    "car": ("taxi", "cab", "sedan", "suv", "jeep"),
    "boat": ("ship", "sailboat", "canoe", "kayak", "yacht", "ferry"),
    "tree": ("pine", "oak", "palm", "maple", "birch", "willow", "fir"),
    "flower": ("rose", "tulip", "daisy", "sunflower", "lily", "orchid", "dandelion"),
    # No "orange": it is far more often the colour.
    "fruit": (
        "apple", "banana", "grape", "strawberry", "pear", "lemon", "cherry", "peach",
        "pineapple", "watermelon", "mango", "berry",
    ),
    "food": (
        "sandwich", "pizza", "burger", "hamburger", "salad", "pasta", "soup", "cake", "bread",
        "fries", "rice", "noodle", "sushi",
    ),
    "drink": ("coffee", "tea", "juice", "soda", "beer", "wine"),
    "furniture": ("chair", "table", "sofa", "couch", "bed", "desk", "shelf", "cabinet"),
    "building": (
        "house", "skyscraper", "tower", "church", "barn", "cabin", "hut", "castle", "temple",
        "cathedral",
    ),
    "bag": ("backpack", "handbag", "purse", "suitcase"),
    "hat": ("cap", "beanie"),
    "shoe": ("sneaker", "boot", "sandal"),
    "computer": ("laptop",),
}

# Two-word compounds in which the first word is no mention of its own: the "water" of "water
# bottle" is not the lake. The value says whether the second word is no mention either:
# a hot dog is no dog, while a water bottle is still a bottle.
COMPOUNDS: Mapping[str, bool] = {
    squash("".join(c.split())): head_blocked
    for c, head_blocked in (
        ("hot dog", True), ("teddy bear", True), ("sea lion", True), ("horse shoe", True),
        ("water bottle", False), ("traffic light", False), ("street light", False),
        ("bus stop", False), ("fire hydrant", False), ("fire truck", False),
        ("dog house", False), ("bird house", False), ("tree house", False), ("dog food", False),
        ("cat food", False), ("bird feeder", False), ("sea shell", False),
        ("water tower", False), ("pine cone", False), ("car park", False),
    )
}

# Words kept in front of the noun. Colours are listed apart to reject e.g. "white swan" for
# an entity "black swan" when only the head noun matched.
HUES = frozenset({
    "black", "white", "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown",
    "grey", "gray", "golden", "gold", "silver", "beige", "tan", "navy", "turquoise", "maroon",
})
QUANTITIES = frozenset({
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "twenty", "hundred", "dozen", "several", "multiple", "many", "numerous",
})
ADJECTIVES = HUES | frozenset({
    # colour qualifiers and patterns
    "dark", "light", "pale", "bright", "colorful", "colourful", "multicolored", "multicoloured",
    "striped", "spotted", "dotted", "checkered", "plaid",
    # size and shape
    "small", "large", "big", "little", "tiny", "huge", "giant", "tall", "short", "long", "wide",
    "narrow", "thin", "thick", "round", "square", "fat", "massive", "enormous",
    # age, state, look
    "young", "old", "new", "adult", "baby", "wild", "wet", "dry", "clean", "dirty", "empty",
    "full", "open", "closed", "calm", "fluffy", "furry", "cute", "beautiful", "pretty", "lush",
    "grassy", "sandy", "rocky", "snowy", "sunny", "cloudy", "clear", "busy", "male", "female",
    "elderly", "wooden", "metal", "metallic", "plastic", "glass", "stone", "brick", "leather",
    "paper", "ceramic", "concrete", "marble", "steel", "fresh", "ripe", "sliced",
})
MAX_MODIFIERS = 4


def is_modifier(word: str) -> bool:
    if word.isdigit() or word in QUANTITIES or word in ADJECTIVES:
        return True
    parts = word.split("-")
    if len(parts) > 1:
        # "black-and-white", "dark-brown", "red-colored"
        return all(p in ADJECTIVES or p in {"and", "or", "colored", "coloured"} for p in parts)
    return False
