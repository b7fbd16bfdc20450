"""Procedural captioned images: the training data of the demo models and the pictures the demo serves.

No image data set may be downloaded, so the demo CLIP learns from scenes this module draws: a few
shapes of one colour and count in one region of the canvas ("two red circles on the left"), with
captions in English, German, French and Spanish. Variants exist for the three tagging heads:
`watermark=True` overlays semi-transparent text/logo marks, `unsafe_proxy=True` adds a
striped-badge marker that the NSFW-architecture demo head learns as its "unsafe" class, and
`quality` below 1 fades the picture toward grey, the signal the demo aesthetic head rates. The
marker is a PROXY for tests and demos, nothing about it resembles real unsafe content; contrast
is a stand-in for aesthetics, not a model of it.

Everything is deterministic in the spec: the same `SceneSpec` always renders the same pixels, so a
test can regenerate exactly what a local HTTP server handed to the worker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageEnhance, ImageFont

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
COUNTS = (1, 2, 3)
POSITIONS = ("left", "right", "top", "bottom")
LANGUAGES = ("en", "de", "fr", "es")

# Drawing colours: each name covers a band of hues so the model learns the name, not one RGB value.
_RGB = {
    "red": ((200, 20, 20), (255, 70, 60)),
    "green": ((20, 150, 30), (70, 210, 80)),
    "blue": ((20, 40, 200), (70, 100, 255)),
    "yellow": ((220, 200, 0), (255, 245, 60)),
}

_WATERMARK_WORDS = ("© altlake", "SAMPLE", "stock", "PREVIEW", "© photo", "demo.example")
# Contrast left at quality 0: a faint but still visible scene (0 would be one flat grey).
_MIN_CONTRAST = 0.1
# LAION-Aesthetics' rating scale, which the demo aesthetic head is trained to predict.
RATING_MIN, RATING_MAX = 1.0, 10.0


@dataclass(frozen=True)
class SceneSpec:
    """What one picture shows; `seed` fixes the jitter (exact placement, size, background)."""

    shape: str
    colour: str
    count: int
    position: str
    seed: int = 0
    watermark: bool = False
    unsafe_proxy: bool = False
    quality: float = 1.0  # 1: full contrast; lower fades the whole picture toward its mean grey

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.colour not in COLOURS:
            raise ValueError(f"unknown shape/colour in {self}: shapes {SHAPES}, colours {COLOURS}")
        if self.count not in COUNTS or self.position not in POSITIONS:
            raise ValueError(f"unknown count/position in {self}: counts {COUNTS}, positions {POSITIONS}")
        if not 0.0 <= self.quality <= 1.0:
            raise ValueError(f"quality must be within [0, 1], not {self.quality}")


def rating(spec: SceneSpec) -> float:
    """The scene's made-up aesthetic rating: its quality on LAION-Aesthetics' 1-10 scale."""
    return RATING_MIN + (RATING_MAX - RATING_MIN) * spec.quality


def random_spec(rng: random.Random, watermark: bool = False, unsafe_proxy: bool = False, quality: float = 1.0) -> SceneSpec:
    """A uniformly drawn scene; variants are opt-in so plain draws stay clean (and use the same draws)."""
    return SceneSpec(
        shape=rng.choice(SHAPES),
        colour=rng.choice(COLOURS),
        count=rng.choice(COUNTS),
        position=rng.choice(POSITIONS),
        seed=rng.randrange(2**31),
        watermark=watermark,
        unsafe_proxy=unsafe_proxy,
        quality=quality,
    )


def mismatched_spec(spec: SceneSpec, rng: random.Random) -> SceneSpec:
    """A random scene whose caption differs from `spec`'s (an alt text that does not fit the image)."""
    while True:
        other = random_spec(rng)
        if (other.shape, other.colour, other.count, other.position) != (spec.shape, spec.colour, spec.count, spec.position):
            return other


# --- captions -------------------------------------------------------------------------------------

_NUMBERS = {
    "en": {1: "one", 2: "two", 3: "three"},
    "de": {1: "ein", 2: "zwei", 3: "drei"},
    "fr": {1: "un", 2: "deux", 3: "trois"},
    "es": {1: "un", 2: "dos", 3: "tres"},
}
# shape -> (singular, plural); German also needs the grammatical gender for the adjective ending.
_NOUNS = {
    "en": {"circle": ("circle", "circles"), "square": ("square", "squares"), "triangle": ("triangle", "triangles")},
    "de": {"circle": ("Kreis", "Kreise"), "square": ("Quadrat", "Quadrate"), "triangle": ("Dreieck", "Dreiecke")},
    "fr": {"circle": ("cercle", "cercles"), "square": ("carré", "carrés"), "triangle": ("triangle", "triangles")},
    "es": {"circle": ("círculo", "círculos"), "square": ("cuadrado", "cuadrados"), "triangle": ("triángulo", "triángulos")},
}
_GERMAN_GENDER = {"circle": "m", "square": "n", "triangle": "n"}
_ADJECTIVES = {
    "en": {c: (c, c) for c in COLOURS},
    "de": {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb"},
    "fr": {"red": ("rouge", "rouges"), "green": ("vert", "verts"), "blue": ("bleu", "bleus"), "yellow": ("jaune", "jaunes")},
    "es": {"red": ("rojo", "rojos"), "green": ("verde", "verdes"), "blue": ("azul", "azules"), "yellow": ("amarillo", "amarillos")},
}
_PLACES = {
    "en": {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"},
    "de": {"left": "links", "right": "rechts", "top": "oben", "bottom": "unten"},
    "fr": {"left": "à gauche", "right": "à droite", "top": "en haut", "bottom": "en bas"},
    "es": {"left": "a la izquierda", "right": "a la derecha", "top": "arriba", "bottom": "abajo"},
}
_BADGE = {
    "en": "with a striped badge",
    "de": "mit gestreiftem Abzeichen",
    "fr": "avec un badge rayé",
    "es": "con una insignia rayada",
}


def caption(spec: SceneSpec, language: str = "en") -> str:
    """The alt text that describes `spec` in `language` (one of LANGUAGES)."""
    if language not in LANGUAGES:
        raise ValueError(f"no captions in {language!r}; available: {LANGUAGES}")
    plural = spec.count > 1
    number = _NUMBERS[language][spec.count]
    noun = _NOUNS[language][spec.shape][plural]
    if language == "de":
        stem = _ADJECTIVES["de"][spec.colour]
        ending = "e" if plural else ("er" if _GERMAN_GENDER[spec.shape] == "m" else "es")
        words = [number, stem + ending, noun]
    elif language == "en":
        words = [number, spec.colour, noun]
    else:  # French and Spanish put the colour after the noun
        words = [number, noun, _ADJECTIVES[language][spec.colour][plural]]
    words.append(_PLACES[language][spec.position])
    if spec.unsafe_proxy:
        words.append(_BADGE[language])
    return " ".join(words)


# --- drawing --------------------------------------------------------------------------------------


def render(spec: SceneSpec, size: int = 64) -> Image.Image:
    """Draw `spec` as an RGB image of `size` x `size` pixels."""
    rng = random.Random(spec.seed)
    background = tuple(rng.randint(200, 250) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    _draw_shapes(draw, spec, rng, size)
    if spec.unsafe_proxy:
        _draw_badge(image, spec.position, rng, size)
    if spec.watermark:
        image = _overlay_watermark(image, rng, size)
    if spec.quality < 1.0:  # last, and without a draw: a full-quality scene renders as it always did
        image = ImageEnhance.Contrast(image).enhance(_MIN_CONTRAST + (1.0 - _MIN_CONTRAST) * spec.quality)
    return image


def _region(position: str, size: int) -> tuple[int, int, int, int]:
    half = size // 2
    return {
        "left": (0, 0, half, size),
        "right": (half, 0, size, size),
        "top": (0, 0, size, half),
        "bottom": (0, half, size, size),
    }[position]


def _draw_shapes(draw: ImageDraw.ImageDraw, spec: SceneSpec, rng: random.Random, size: int) -> None:
    x0, y0, x1, y1 = _region(spec.position, size)
    long_side = max(x1 - x0, y1 - y0)
    # Slots along the region's long axis keep the shapes apart, so the count stays countable.
    radius = max(3, int(long_side / (2 * 3) * rng.uniform(0.6, 0.85)))
    low, high = _RGB[spec.colour]
    fill = tuple(rng.randint(a, b) for a, b in zip(low, high))
    vertical = (y1 - y0) > (x1 - x0)
    slots = rng.sample(range(3), spec.count)
    for slot in slots:
        along = (slot + 0.5) / 3
        jitter = rng.uniform(-0.06, 0.06)
        across = 0.5 + rng.uniform(-0.15, 0.15)
        if vertical:
            cx, cy = x0 + across * (x1 - x0), y0 + (along + jitter) * (y1 - y0)
        else:
            cx, cy = x0 + (along + jitter) * (x1 - x0), y0 + across * (y1 - y0)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if spec.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif spec.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)


def _draw_badge(image: Image.Image, position: str, rng: random.Random, size: int) -> None:
    """The unsafe-proxy marker: a black/magenta diagonally striped square in a random corner."""
    side = max(8, size // 4)
    near, far = 1, size - side - 1
    # Corners away from the shapes' half, so the badge never hides what the caption counts.
    corner_x = {"left": far, "right": near}.get(position, rng.choice((near, far)))
    corner_y = {"top": far, "bottom": near}.get(position, rng.choice((near, far)))
    badge = Image.new("RGB", (side, side))
    pixels = badge.load()
    stripe = max(2, side // 5)
    for x in range(side):
        for y in range(side):
            pixels[x, y] = (230, 0, 200) if ((x + y) // stripe) % 2 == 0 else (15, 15, 15)
    image.paste(badge, (corner_x, corner_y))


def _overlay_watermark(image: Image.Image, rng: random.Random, size: int) -> Image.Image:
    """Semi-transparent text (stock-photo style) or a logo ring, blended over the whole picture."""
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    shade = rng.choice((255, 0))
    alpha = rng.randint(90, 160)
    if rng.random() < 0.7:
        font = ImageFont.load_default(size=max(8, int(size * rng.uniform(0.16, 0.24))))
        word = rng.choice(_WATERMARK_WORDS)
        text_layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
        text_draw = ImageDraw.Draw(text_layer)
        for row in range(rng.randint(1, 3)):
            y = rng.uniform(0.05, 0.75) * size
            text_draw.text((rng.uniform(-0.2, 0.3) * size, y), word, font=font, fill=(shade, shade, shade, alpha))
        layer = text_layer.rotate(rng.uniform(-35, 35), resample=Image.Resampling.BICUBIC)
    else:
        r = size * rng.uniform(0.18, 0.3)
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        width = max(2, size // 20)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(shade, shade, shade, alpha), width=width)
        draw.line((cx - r * 0.6, cy, cx + r * 0.6, cy), fill=(shade, shade, shade, alpha), width=width)
        draw.line((cx, cy - r * 0.6, cx, cy + r * 0.6), fill=(shade, shade, shade, alpha), width=width)
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")

