"""The embedded dataset: deterministic synthetic social-media posts in four classes.

`generate_posts(n, seed)` needs no files and no network, and the same (n, seed) always gives the
same posts. Each post is a template filled with words from its class's lexicon plus shared nouns,
then dressed the way real posts are: emojis, #hashtags, @mentions, URLs, misspellings, elongated
words ("sooo"), shouting and "!!!".

The labels are learnable from the words but not trivially: some posts borrow a word or an emoji
from another class, templates and nouns are shared, and a fraction `label_noise` of the labels is
replaced by a random other class, so a perfect model scores about 1 - label_noise.
"""

from __future__ import annotations

import random

from fbdl_fast.data import Posts

CLASSES = ("positive", "negative", "neutral", "spam")

_WORDS = {
    "positive": [
        "love",
        "amazing",
        "great",
        "awesome",
        "happy",
        "best",
        "wonderful",
        "fantastic",
        "excited",
        "beautiful",
        "thankful",
        "perfect",
        "brilliant",
        "enjoyed",
        "proud",
        "blessed",
        "fun",
        "delicious",
        "recommend",
        "cute",
    ],
    "negative": [
        "hate",
        "terrible",
        "awful",
        "worst",
        "sad",
        "angry",
        "disappointed",
        "broken",
        "horrible",
        "annoying",
        "boring",
        "rude",
        "useless",
        "waste",
        "ugh",
        "sick",
        "tired",
        "failed",
        "cancelled",
        "gross",
    ],
    "neutral": [
        "meeting",
        "schedule",
        "weather",
        "tomorrow",
        "reminder",
        "announced",
        "report",
        "photos",
        "recipe",
        "traffic",
        "article",
        "event",
        "class",
        "lunch",
        "office",
        "news",
        "watching",
        "update",
        "agenda",
        "forecast",
    ],
    "spam": [
        "free",
        "win",
        "click",
        "prize",
        "giveaway",
        "offer",
        "cash",
        "discount",
        "limited",
        "deal",
        "subscribe",
        "followers",
        "crypto",
        "bonus",
        "earn",
        "winner",
        "promo",
        "guaranteed",
        "cheap",
        "claim",
    ],
}
_EMOJIS = {
    "positive": ["😍", "🎉", "❤️", "👍", "✨", "🥰", "😊"],
    "negative": ["😡", "😢", "👎", "💔", "😤", "🙄", "😞"],
    "neutral": ["📅", "📰", "☕", "🌧️", "📷", "🚗", "🤔"],
    "spam": ["💰", "🔥", "🎁", "💸", "🤑", "🚀", "💯"],
}
_SHARED_EMOJIS = ["😂", "🙏", "👀", "👨‍👩‍👧", "👍🏽"]  # family (ZWJ) and skin-tone sequences
_TAGS = {
    "positive": ["#blessed", "#happy", "#goodvibes", "#love"],
    "negative": ["#fail", "#mondays", "#neveragain", "#rant"],
    "neutral": ["#news", "#update", "#local", "#today"],
    "spam": ["#giveaway", "#free", "#win", "#ad"],
}
_SHARED_TAGS = ["#tbt", "#weekend", "#fb", "#life", "#2024"]
_THINGS = [
    "coffee",
    "movie",
    "game",
    "phone",
    "concert",
    "trip",
    "food",
    "service",
    "app",
    "show",
    "book",
    "team",
    "weekend",
    "party",
    "flight",
    "store",
    "song",
    "class",
    "bus",
    "pizza",
]
_TIMES = ["9am", "noon", "3:30pm", "tonight", "monday", "this weekend", "next week"]
_HANDLES = [
    "sarah_j",
    "mike88",
    "the_real_dan",
    "cityhall",
    "foodie_amy",
    "newsdesk",
    "Kev",
    "marta.l",
    "jo_jo",
    "bestdeals",
]
_TEMPLATES = {
    "positive": [
        "{w} {thing} today {emo}{emo}",
        "just had the most {w} {thing} with {user} {emo}",
        "so {w}! {w2} {thing} ever {emo} {tag}",
        "{user} thank you, this {thing} is {w}",
        "feeling {w} about the {thing} {tag} {emo}",
        "{w} {w2} {thing} {emo}",
    ],
    "negative": [
        "{w} {thing} again {emo}",
        "the {thing} was {w}, {w2} experience {emo} {tag}",
        "{user} your {thing} is {w} {emo}",
        "why is the {thing} so {w} {emo}",
        "{w}... {w2} {thing} today {tag}",
        "{w} {w2} {thing} {emo}",
    ],
    "neutral": [
        "{w} about the {thing} at {time} {tag}",
        "{user} {w} for the {thing} is out {url}",
        "new {w} on the {thing} {url}",
        "{thing} {w} {time} {emo}",
        "{w} and {w2} for {time} {tag}",
        "{w} {w2} {thing} {emo}",
    ],
    "spam": [
        "{w} {w2} now {url} {emo}{emo}",
        "{user} {w} {thing} {w2}! {url} {tag}",
        "{emo} {w} {w2} {w} {url}",
        "dm me for {w} {w2} {tag} {url}",
        "{w} {thing} {w2} {tag}",
        "{w} {w2} {thing} {emo}",
    ],
}
# How often a post links somewhere: spam nearly always, news often, chat rarely.
_URL_RATE = {"positive": 0.05, "negative": 0.05, "neutral": 0.3, "spam": 0.9}


def generate_posts(
    n: int = 2000, seed: int = 0, label_noise: float = 0.05, overlap: float = 0.25
) -> Posts:
    """`n` synthetic posts with string labels from CLASSES, balanced, in shuffled order.

    Args:
        n: number of posts (>= 1).
        seed: the only source of randomness; same arguments, same posts.
        label_noise: fraction of posts whose label is replaced by another class.
        overlap: chance that a post borrows one word from another class.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} is invalid; expected a positive number of posts")
    for name, value in (("label_noise", label_noise), ("overlap", overlap)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value!r} is invalid; expected a probability in [0, 1]")
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        cls = CLASSES[i % len(CLASSES)]  # balanced classes
        texts.append(_post(rng, cls, overlap))
        if rng.random() < label_noise:
            cls = rng.choice([c for c in CLASSES if c != cls])
        labels.append(cls)
    order = list(range(n))
    rng.shuffle(order)
    return Posts(
        [texts[i] for i in order],
        [labels[i] for i in order],
        list(range(1, n + 1)),
        source=f"<synthetic n={n} seed={seed}>",
    )


def _post(rng: random.Random, cls: str, overlap: float) -> str:
    other = rng.choice([c for c in CLASSES if c != cls])
    borrow = rng.random() < overlap
    words = _WORDS[cls]
    slots = {
        "w": _noisy(rng, rng.choice(words)),
        "w2": _noisy(rng, rng.choice(_WORDS[other] if borrow else words)),
        "thing": _noisy(rng, rng.choice(_THINGS)),
        "emo": rng.choice(_EMOJIS[cls] if rng.random() < 0.8 else _SHARED_EMOJIS),
        "tag": rng.choice(_TAGS[cls] if rng.random() < 0.7 else _SHARED_TAGS),
        "user": _mention(rng),
        "url": _url(rng),
        "time": rng.choice(_TIMES),
    }
    text = rng.choice(_TEMPLATES[cls]).format(**slots)
    # Extras every class can carry, so no single feature gives the label away.
    if rng.random() < 0.15:
        text = f"{_mention(rng)} {text}"
    if rng.random() < _URL_RATE[cls] and "http" not in text:
        text = f"{text} {_url(rng)}"
    if rng.random() < 0.2:
        text += " " + rng.choice(_SHARED_TAGS)
    if rng.random() < 0.15:
        text += "!!!" if rng.random() < 0.5 else " " + rng.choice(_SHARED_EMOJIS)
    return text


def _noisy(rng: random.Random, word: str) -> str:
    """Sometimes misspell, elongate or shout a word, as people do."""
    r = rng.random()
    if r < 0.06 and len(word) >= 4:  # drop a letter
        i = rng.randrange(1, len(word))
        return word[:i] + word[i + 1 :]
    if r < 0.12 and len(word) >= 4:  # swap two neighbours
        i = rng.randrange(1, len(word) - 1)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if r < 0.20:  # elongate the last vowel: "soooo", "amaaazing"
        vowels = [i for i, ch in enumerate(word) if ch in "aeiouy"]
        if vowels:
            i = vowels[-1]
            return word[:i] + word[i] * rng.randint(3, 5) + word[i + 1 :]
    if r < 0.25:
        return word.upper()
    return word


def _mention(rng: random.Random) -> str:
    return "@" + rng.choice(_HANDLES)


def _url(rng: random.Random) -> str:
    code = "".join(rng.choice("abcdefghijkmnpqrstuvwxyzABCDEFGH23456789") for _ in range(6))
    host = rng.choice(["https://bit.ly/", "https://t.co/", "http://www.example.com/p/"])
    return host + code
