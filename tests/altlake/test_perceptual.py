"""PDQ perceptual hashes on real photos: copies stay within the match distance, other photos do not."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image
from skimage import data

from altlake import perceptual
from altlake_cli.image_server import photo_files

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "hubble_deep_field", "immunohistochemistry", "retina")  # (skimage.data.cat is chelsea)


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def copies(image: Image.Image) -> dict[str, Image.Image]:
    """What a re-host does to a picture: resize, re-encode, trim a little."""
    w, h = image.size
    return {
        "half size": image.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "double size": image.resize((w * 2, h * 2), Image.Resampling.BICUBIC),
        "jpeg quality 30": _jpeg(image, 30),
        "1% cropped off each side": image.crop((w // 100, h // 100, w - w // 100, h - h // 100)),
        "2% cropped off one side": image.crop((0, 0, w - w // 50, h)),
        "thumbnail, re-encoded": _jpeg(image.resize((150, 150 * h // w)), 70),
    }


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_copies_of_a_photo_stay_within_the_match_distance(name):
    original, quality = perceptual.pdq_hash(_photo(name))
    assert perceptual.is_pdq(original) and quality >= perceptual.MIN_QUALITY
    distances = {kind: perceptual.distance(original, perceptual.pdq_hash(copy)[0]) for kind, copy in copies(_photo(name)).items()}
    assert all(d <= perceptual.DEFAULT_MAX_DISTANCE for d in distances.values()), distances


def test_different_photos_are_far_apart():
    hashes = {name: perceptual.pdq_hash(_photo(name))[0] for name in PHOTOS}
    closest = min(perceptual.distance(hashes[a], hashes[b]) for a, b in itertools.combinations(PHOTOS, 2))
    assert closest > 2 * perceptual.DEFAULT_MAX_DISTANCE


def test_distance_counts_differing_bits():
    zero, ones = "0" * 64, "f" * 64
    assert perceptual.distance(zero, ones) == 256
    assert perceptual.distance(zero, "0" * 63 + "7") == 3
    assert perceptual.distance("8" + "0" * 63, zero) == 1  # the top bit counts too


def test_a_flat_image_has_low_quality_and_a_file_that_is_no_image_is_refused(tmp_path):
    flat = Image.fromarray(np.full((200, 300, 3), 128, np.uint8))
    assert perceptual.pdq_hash(flat)[1] < perceptual.MIN_QUALITY
    path = tmp_path / "not-an-image.jpg"
    path.write_bytes(b"<html>hello</html>")
    with pytest.raises(ValueError, match="not-an-image.jpg: not an image"):
        perceptual.pdq_of_file(str(path))
    photo = tmp_path / "astronaut.png"
    _photo("astronaut").save(photo)
    assert perceptual.pdq_of_file(str(photo)) == perceptual.pdq_hash(_photo("astronaut"))


@pytest.mark.parametrize("side", [200, 600])
def test_pixels_hash_like_the_pil_image_they_came_from(side):
    """The worker hashes numpy pixels, takedown requests hash image files: one definition for both,
    at the stored size and above HASH_SIDE (brought down the same way)."""
    image = _photo("coffee").resize((side, side * 2 // 3))
    pixels = np.asarray(image)
    assert perceptual.pdq_hash(pixels) == perceptual.pdq_hash(image)
    framed = np.full((300, 300, 3), 255, np.uint8)
    framed[50 : 50 + 133, 0:200] = np.asarray(_photo("coffee").resize((200, 133)))
    view = framed[50 : 50 + 133, 0:200]  # a non-contiguous view, as the worker hashes inside the border
    assert perceptual.pdq_hash(view) == perceptual.pdq_hash(Image.fromarray(np.ascontiguousarray(view)))


def _reference(pixels: np.ndarray) -> tuple[str, int]:
    """ThreatExchange's C++ PDQ through the pdqhash binding, bits packed as altlake packs them."""
    import pdqhash

    bits, quality = pdqhash.compute(np.ascontiguousarray(pixels))
    return np.packbits(bits.astype(np.uint8)).tobytes().hex(), int(quality)


def _real_photos() -> list[np.ndarray]:
    """Every photo shipped with scikit-image and scikit-learn (the image server's set), in RGB."""
    photos = []
    for path in photo_files().values():
        with Image.open(path) as image:
            if min(image.size) >= 64 and image.mode in {"RGB", "L", "RGBA", "P"}:
                photos.append(np.asarray(image.convert("RGB")))
    return photos


def _bits_undefined(pixels: np.ndarray) -> bool:
    """True for pictures whose hash is rounding noise in any implementation: more than half of the
    reference's DCT coefficients equal its median (checkerboards and other synthetic patterns)."""
    import pdqhash

    coefficients, _ = pdqhash.compute_float(np.ascontiguousarray(pixels))
    median = np.sort(coefficients)[127]
    return int(np.sum(np.abs(coefficients - median) <= 1e-3 * np.abs(coefficients).max())) > 128


def test_hashes_and_qualities_equal_the_reference_implementation_on_real_photos():
    """altlake computes PDQ as matrices; ThreatExchange's reference runs box filters. Same bits and
    quality at every size the worker stores (64 to 256 px, any aspect), odd sizes included."""
    photos = _real_photos()
    assert len(photos) >= 20
    compared = 0
    for photo in photos:
        for side, shape in itertools.product((256, 224, 131, 64), ("as is", "wide", "tall")):
            height, width = photo.shape[:2]
            if shape == "wide":
                height = height // 2
            elif shape == "tall":
                width = width // 3
            scale = side / max(height, width)
            size = (max(round(width * scale), 5), max(round(height * scale), 5))
            pixels = np.asarray(Image.fromarray(photo[:height, :width]).resize(size, Image.Resampling.BILINEAR))
            expected, expected_quality = _reference(pixels)
            if expected_quality < perceptual.MIN_QUALITY or _bits_undefined(pixels):
                continue
            assert perceptual.pdq_hash(pixels) == (expected, expected_quality), (photo.shape, size)
            compared += 1
    assert compared >= 200


def test_tiny_images_have_no_hash_like_the_reference():
    pixels = np.asarray(_photo("coffee").resize((4, 30)))
    assert perceptual.pdq_hash(pixels) == ("0" * perceptual.HASH_HEX, 0) == _reference(pixels)
