"""Sounds of the synthetic world: synthesized chirps, barks, horns, bells... at 16 kHz, 2-8 s.

    sound = make_sound(seed)                      # deterministic: same seed -> same samples
    sound = make_sound(seed, kind="dog")          # a chosen kind
    sound.kind, sound.source                      # "dog", "dog" (the object kind that makes it, or None)
    sound.count                                   # number of events (barks), None for continuous sounds
    sound.wav(), sound.encode("FLAC")             # encoded bytes (16-bit PCM)

Six kinds belong to an object kind of `scene.OBJECT_KINDS` (bird, dog, cat, car, boat, ball) and can
be "heard from" a picture; bell, drum and wind belong to nothing that is ever drawn. Only numpy and
soundfile.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16000
MIN_SECONDS, MAX_SECONDS = 2.0, 8.0


@dataclass(frozen=True)
class SoundKind:
    name: str
    source: str | None  # the object kind (scene.OBJECT_KINDS) that makes it
    noun: str  # "a dog barking"
    verb: str  # "barks"
    counts: tuple[int, ...] | None  # possible event counts; None: continuous
    event_seconds: tuple[float, float]  # length of one event


SOUND_KINDS: dict[str, SoundKind] = {
    k.name: k
    for k in (
        SoundKind("bird", "bird", "a bird chirping", "chirps", (1, 2, 3, 4, 5), (0.12, 0.2)),
        SoundKind("dog", "dog", "a dog barking", "barks", (1, 2, 3, 4, 5), (0.18, 0.28)),
        SoundKind("cat", "cat", "a cat meowing", "meows", (1, 2, 3, 4), (0.55, 0.85)),
        SoundKind("car", "car", "a car horn honking", "honks", (1, 2, 3, 4), (0.3, 0.6)),
        SoundKind("boat", "boat", "a boat horn blowing", "blows its horn", (1, 2, 3), (0.9, 1.5)),
        SoundKind("ball", "ball", "a ball bouncing", "bounces", (2, 3, 4, 5), (0.08, 0.1)),
        SoundKind("bell", None, "a bell ringing", "rings", (1, 2, 3, 4), (1.0, 1.3)),
        SoundKind("drum", None, "a drum beating", "beats", (2, 3, 4, 5), (0.2, 0.3)),
        SoundKind("wind", None, "the wind blowing", "blows", None, (0.0, 0.0)),
    )
}
SOUND_NAMES: tuple[str, ...] = tuple(SOUND_KINDS)
SOURCE_SOUNDS: tuple[str, ...] = tuple(k for k, v in SOUND_KINDS.items() if v.source is not None)
BACKGROUNDS = ("quiet", "hiss")


@dataclass
class Sound:
    seed: int
    kind: str
    count: int | None  # events; None for a continuous sound
    loudness: str  # loud | quiet
    background: str  # quiet | hiss
    samples: np.ndarray = field(repr=False)  # float32 mono in [-1, 1]
    events: list[tuple[float, float]] = field(default_factory=list)  # (start, end) seconds
    sample_rate: int = SAMPLE_RATE

    @property
    def source(self) -> str | None:
        return SOUND_KINDS[self.kind].source

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    def encode(self, fmt: str = "WAV") -> bytes:
        import soundfile as sf

        buffer = io.BytesIO()
        sf.write(buffer, self.samples, self.sample_rate, format=fmt.upper(), subtype="PCM_16")
        return buffer.getvalue()

    def wav(self) -> bytes:
        return self.encode("WAV")

    def to_dict(self) -> dict:
        return {
            "seed": self.seed, "kind": self.kind, "source": self.source, "count": self.count, "loudness": self.loudness,
            "background": self.background, "duration": round(self.duration, 4),
            "events": [[round(a, 4), round(b, 4)] for a, b in self.events],
        }


# --------------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------------


def _time(seconds: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    return np.arange(int(round(seconds * sr))) / sr


def _oscillate(freq: np.ndarray, harmonics: tuple[float, ...] = (1.0,), sr: int = SAMPLE_RATE) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return sum(a * np.sin((k + 1) * phase) for k, a in enumerate(harmonics) if a)


def _envelope(n: int, attack: float, release: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    env = np.ones(n)
    a, r = min(n, max(1, int(attack * sr))), min(n, max(1, int(release * sr)))
    env[:a] *= np.linspace(0, 1, a)
    env[n - r :] *= np.linspace(1, 0, r)
    return env


def _smooth_noise(n: int, rng: np.random.Generator, width: int) -> np.ndarray:
    """White noise low-passed by a moving average of `width` samples (numpy only)."""
    white = rng.standard_normal(n + width)
    c = np.cumsum(white)
    out = (c[width:] - c[:-width]) / np.sqrt(width)
    return out[:n]


def _event(kind: str, seconds: float, rng: np.random.Generator, index: int) -> np.ndarray:
    t = _time(seconds)
    n = t.size
    if kind == "bird":
        f0, f1 = rng.uniform(2300, 2900), rng.uniform(3800, 4600)
        if rng.random() < 0.5:
            f0, f1 = f1, f0
        freq = f0 * (f1 / f0) ** (t / seconds)
        return _oscillate(freq, (1.0, 0.25)) * np.sin(np.pi * t / seconds) ** 2
    if kind == "dog":
        f = rng.uniform(330, 480) * (1 - 0.35 * t / seconds)
        tone = _oscillate(f, (1.0, 0.7, 0.5, 0.35, 0.25, 0.15))
        noise = _smooth_noise(n, rng, 4)
        return (0.6 * tone + 0.5 * noise) * np.exp(-t / (0.35 * seconds)) * _envelope(n, 0.008, 0.02)
    if kind == "cat":
        base = rng.uniform(420, 520)
        bump = np.sin(np.pi * t / seconds)
        f = base * (1 + 0.55 * bump) + 8 * np.sin(2 * np.pi * 6 * t)
        return _oscillate(f, (1.0, 0.5, 0.3, 0.2)) * _envelope(n, 0.08, 0.18) * (0.5 + 0.5 * bump)
    if kind == "car":
        tone = np.tanh(3 * (np.sin(2 * np.pi * 392 * t) + np.sin(2 * np.pi * 494 * t)))
        return tone * _envelope(n, 0.01, 0.03)
    if kind == "boat":
        f = np.full(n, rng.uniform(95, 140))
        return _oscillate(f, (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15)) * _envelope(n, 0.15, 0.25)
    if kind == "ball":
        f = rng.uniform(110, 170) * (1 - 0.3 * t / seconds)
        thud = _oscillate(f) * np.exp(-t / 0.025)
        click = np.zeros(n)
        k = min(n, 80)
        click[:k] = rng.standard_normal(k) * np.linspace(1, 0, k)
        return thud + 0.4 * click
    if kind == "bell":
        f0 = rng.uniform(700, 1100)
        partials = [(1.0, 1.0, 0.5), (2.0, 0.5, 0.35), (2.76, 0.4, 0.25), (5.4, 0.25, 0.12), (8.93, 0.15, 0.06)]
        out = sum(a * np.sin(2 * np.pi * f0 * m * t) * np.exp(-t / tau) for m, a, tau in partials)
        return out * _envelope(n, 0.002, 0.05)
    if kind == "drum":
        f = 55 + 60 * np.exp(-t / 0.03)
        body = _oscillate(f) * np.exp(-t / 0.09)
        noise = _smooth_noise(n, rng, 3) * np.exp(-t / 0.02)
        return body + 0.35 * noise
    raise ValueError(f"no event synthesis for {kind!r}")


def _place(count: int, event: tuple[float, float], duration: float, kind: str, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Event (start, end) times: evenly spread slots with jitter; a bouncing ball speeds up."""
    if kind == "ball":
        gap = rng.uniform(0.45, 0.7)
        start = rng.uniform(0.2, 0.6)
        spans = []
        for _ in range(count):
            length = rng.uniform(*event)
            spans.append((start, start + length))
            start += gap
            gap *= 0.75
        return spans
    slot = duration / count
    spans = []
    for i in range(count):
        length = rng.uniform(*event)
        room = max(0.0, slot - length - 0.25)
        start = i * slot + 0.1 + rng.uniform(0, room)
        spans.append((start, start + length))
    return spans


def make_sound(seed: int, kind: str | None = None, *, count: int | None = None, duration: float | None = None) -> Sound:
    """A sound drawn from `seed` (kind, count, length, loudness, background), or of the given kind/count."""
    rng = np.random.default_rng(seed)
    if kind is None:
        kind = SOUND_NAMES[int(rng.integers(len(SOUND_NAMES)))]
    if kind not in SOUND_KINDS:
        raise ValueError(f"unknown sound kind {kind!r}; expected one of {SOUND_NAMES}")
    spec = SOUND_KINDS[kind]
    if spec.counts is None:
        count = None
    elif count is None:
        count = spec.counts[int(rng.integers(len(spec.counts)))]
    elif count not in spec.counts:
        raise ValueError(f"sound {kind!r}: count must be one of {spec.counts}, got {count}")
    chosen = duration
    if duration is None:
        needed = 0.0 if count is None else count * (spec.event_seconds[1] + 0.45)
        duration = float(rng.uniform(max(MIN_SECONDS, needed), MAX_SECONDS))
    if not MIN_SECONDS <= duration <= MAX_SECONDS:
        raise ValueError(f"duration must be in [{MIN_SECONDS}, {MAX_SECONDS}] s, got {duration}")
    spans = [] if count is None else _place(count, spec.event_seconds, duration, kind, rng)
    if chosen is None and spans and spans[-1][1] + 0.1 > duration:
        duration = min(MAX_SECONDS, spans[-1][1] + 0.1)
    n = int(round(duration * SAMPLE_RATE))
    signal = np.zeros(n)
    events: list[tuple[float, float]] = []
    if count is None:  # wind: slowly swelling low-passed noise over the whole clip
        t = _time(duration)[:n]
        swell = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(0.15, 0.4) * t + rng.uniform(0, 6)) ** 2
        signal = _smooth_noise(n, rng, int(rng.integers(12, 30))) * swell * _envelope(n, 0.3, 0.3)
        events = [(0.0, n / SAMPLE_RATE)]
    else:
        for i, (start, end) in enumerate(spans):
            a = int(round(start * SAMPLE_RATE))
            if a >= n:
                raise ValueError(f"sound {kind!r}: {count} events do not fit in {duration} s")
            chunk = _event(kind, end - start, rng, i)[: n - a]
            signal[a : a + chunk.size] += chunk
            events.append((a / SAMPLE_RATE, (a + chunk.size) / SAMPLE_RATE))
    loudness = "loud" if rng.random() < 0.5 else "quiet"
    peak = np.abs(signal).max()
    signal = signal / peak * (0.85 if loudness == "loud" else 0.3) if peak > 0 else signal
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    if background == "hiss":
        signal = signal + rng.uniform(0.008, 0.02) * rng.standard_normal(n)
    samples = np.clip(signal, -1.0, 1.0).astype(np.float32)
    return Sound(seed=seed, kind=kind, count=count, loudness=loudness, background=background, samples=samples, events=events)
