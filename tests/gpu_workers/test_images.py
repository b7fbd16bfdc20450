"""Decode / validate / resize / hash, on real photos and on hostile bodies from the image server."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from altlake_cli.image_server import bomb_png, generated_bytes, photo_bytes
from gpu_workers.images import ImageConfig, ImageRejected, decode, decode_plain_jpeg, encode, read_header, resize, scaled_size, target_size

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def stripes(width: int = 400, height: int = 200) -> Image.Image:
    """Red | green | blue vertical bands: the outer quarters red and blue, the middle half green."""
    image = Image.new("RGB", (width, height), GREEN)
    image.paste(RED, (0, 0, width // 4, height))
    image.paste(BLUE, (3 * width // 4, 0, width, height))
    return image


def close_to(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


def resized(image: Image.Image, size: int, mode: str) -> Image.Image:
    return Image.fromarray(resize(np.asarray(image), size, mode))


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_real_photo_is_decoded_resized_hashed_and_re_encoded():
    body = photo_bytes("china", "jpg", 1024)
    with Image.open(io.BytesIO(body)) as original:
        size = original.size

    decoded = decode(body, ImageConfig(size=256, resize_mode="border"))

    assert (decoded.original_width, decoded.original_height) == size
    assert (decoded.width, decoded.height) == (256, 256) == decoded.image.size
    assert decoded.image.mode == "RGB"
    assert np.array_equal(np.asarray(decoded.image), decoded.pixels)
    assert decoded.sha256 == hashlib.sha256(body).hexdigest()
    assert decoded.md5 == hashlib.md5(body).hexdigest()
    with Image.open(io.BytesIO(decoded.stored_bytes)) as stored:
        assert (stored.format, stored.size) == ("JPEG", (256, 256))


def test_border_fits_the_longest_side_and_pads_white():
    image = resized(stripes(400, 200), 256, "border")
    assert image.size == (256, 256)
    assert close_to(image.getpixel((128, 2)), WHITE) and close_to(image.getpixel((128, 253)), WHITE)
    assert close_to(image.getpixel((2, 128)), RED) and close_to(image.getpixel((253, 128)), BLUE)
    assert close_to(image.getpixel((128, 128)), GREEN)


def test_keep_ratio_scales_the_shortest_side():
    image = resized(stripes(400, 200), 256, "keep_ratio")
    assert image.size == (512, 256)
    assert close_to(image.getpixel((2, 128)), RED)


def test_center_crop_keeps_the_middle_square():
    image = resized(stripes(400, 200), 256, "center_crop")
    assert image.size == (256, 256)
    for x in (1, 128, 254):
        assert close_to(image.getpixel((x, 128)), GREEN), "the red and blue quarters are cropped away"


def test_upscales_small_images_and_no_mode_keeps_pixels():
    assert resized(stripes(100, 50), 256, "border").size == (256, 256)
    body = encoded(stripes(300, 120))
    kept = decode(body, ImageConfig(min_bytes=0, resize_mode="no"))
    unsized = decode(body, ImageConfig(min_bytes=0, size=None, encode_format=None))
    assert kept.image.size == unsized.image.size == (300, 120)
    assert unsized.stored_bytes is None


def test_a_shrink_of_two_or_more_averages_instead_of_aliasing():
    """One-pixel black and white columns shrunk 4x are an even grey; sampling them would keep stripes."""
    columns = np.zeros((64, 1024, 3), np.uint8)
    columns[:, 1::2] = 255
    framed = resize(columns, 256, "border")  # 1024 x 64 -> 256 x 16, centred on white
    shrunk = framed[121:135, 8:248]
    assert abs(float(shrunk.mean()) - 127.5) < 2 and float(shrunk.std()) < 2


def test_a_short_shrink_stays_as_sharp_as_area_averaging():
    """The shrink left after a reduced-scale decode (under 2x) is interpolated: a real photo comes out
    within a few levels of OpenCV's area averaging."""
    import cv2

    photo = np.asarray(Image.open(io.BytesIO(photo_bytes("chelsea", "png", 320))).convert("RGB"))
    size = scaled_size((photo.shape[1], photo.shape[0]), 256, "keep_ratio")
    area = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    ours = resize(photo, 256, "keep_ratio")
    assert ours.shape == area.shape
    assert np.abs(ours.astype(np.int16) - area.astype(np.int16)).mean() < 3.0


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_encode_round_trips_rgb_pixels(fmt):
    """Channels stay in RGB order through OpenCV's BGR encoder; jpg keeps 4:2:0 chroma like Pillow and img2dataset."""
    pixels = np.asarray(stripes(96, 64))
    body = encode(pixels, fmt, 95)
    with Image.open(io.BytesIO(body)) as back:
        assert back.format == {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
        back_pixels = np.asarray(back.convert("RGB"))
    if fmt == "png":
        assert np.array_equal(back_pixels, pixels)
    else:
        assert close_to(back_pixels[32, 2].tolist(), RED) and close_to(back_pixels[32, 48].tolist(), GREEN)
        assert close_to(back_pixels[32, 93].tolist(), BLUE)
    if fmt == "jpg":
        import simplejpeg

        assert simplejpeg.decode_jpeg_header(body)[3] == "420"


@pytest.mark.parametrize(("side", "eighths"), [(1000, 4), (600, 4), (1800, 2), (3000, 1), (400, 8)])
def test_jpegs_decode_at_the_smallest_simd_scale_that_covers_the_target(side, eighths):
    """256 px from 1000 px needs 3/8, which libjpeg-turbo runs without SIMD: 4/8 is taken instead."""
    body = photo_bytes("astronaut", "jpg", side)
    config = ImageConfig(size=256, resize_mode="border")
    header = read_header(body, config)
    pixels = decode_plain_jpeg(body, header, target_size(header, config))
    assert pixels.shape == (-(-header.height * eighths // 8), -(-header.width * eighths // 8), 3)


def test_large_jpeg_decoded_at_reduced_scale_keeps_its_original_dimensions():
    body = photo_bytes("astronaut", "jpg", 2048)
    decoded = decode(body, ImageConfig(size=256, resize_mode="center_crop"))
    assert (decoded.original_width, decoded.original_height) == (2048, 2048)
    assert decoded.image.size == (256, 256)


def test_reduced_scale_jpeg_decode_matches_a_full_pillow_decode():
    """libjpeg-turbo's 1/8-step DCT scaling + a short shrink gives the pixels of a full decode + area averaging, nearly."""
    body = photo_bytes("chelsea", "jpg", 1000)
    for mode in ("border", "center_crop", "keep_ratio"):
        fast = decode(body, ImageConfig(size=200, resize_mode=mode))
        with Image.open(io.BytesIO(body)) as full:
            reference = resize(np.asarray(full.convert("RGB")), 200, mode)
        assert fast.pixels.shape == reference.shape
        diff = np.abs(fast.pixels.astype(np.int16) - reference.astype(np.int16))
        assert diff.mean() < 6.0, mode  # DCT-domain scaling is not a box filter: close, not equal


def test_output_geometry_follows_the_original_size_not_the_decode_scale():
    body = encoded(stripes(1001, 667), "JPEG")
    decoded = decode(body, ImageConfig(min_bytes=0, size=256, resize_mode="keep_ratio"))
    assert decoded.image.size == (round(1001 * 256 / 667), 256) == scaled_size((1001, 667), 256, "keep_ratio")


def test_cmyk_and_multi_picture_jpegs_are_decoded():
    cmyk = io.BytesIO()
    stripes(400, 200).convert("CMYK").save(cmyk, "JPEG")
    mpo = io.BytesIO()
    stripes(400, 200).save(mpo, "MPO", save_all=True, append_images=[stripes(200, 400)])
    with Image.open(io.BytesIO(mpo.getvalue())) as opened:
        assert opened.format == "MPO"  # a camera's multi-picture file: a JPEG with a second frame
    for body in (cmyk.getvalue(), mpo.getvalue()):
        decoded = decode(body, ImageConfig(min_bytes=0, size=128))
        assert (decoded.original_width, decoded.original_height) == (400, 200)
        assert decoded.image.mode == "RGB"
        assert close_to(decoded.image.getpixel((5, 64)), RED) and close_to(decoded.image.getpixel((64, 64)), GREEN)


def test_transparency_is_flattened_on_white():
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (100, 100, 200, 200))
    decoded = decode(encoded(image), ImageConfig(min_bytes=0, size=None))
    assert decoded.image.getpixel((10, 10)) == WHITE
    assert decoded.image.getpixel((150, 150)) == RED


def test_webp_and_png_are_accepted():
    for fmt in ("webp", "png"):
        decoded = decode(photo_bytes("coffee", fmt), ImageConfig())
        assert decoded.image.size == (256, 256)


@pytest.mark.parametrize(
    ("body", "config", "status"),
    [
        (photo_bytes("coffee", "jpg", 40), ImageConfig(min_bytes=5_000), "too_small"),
        (bomb_png(), ImageConfig(), "too_many_pixels"),
        (generated_bytes("big", "png", 200, 200), ImageConfig(min_bytes=0, max_pixels=10_000), "too_many_pixels"),
        (generated_bytes("anim", "gif", 200, 200), ImageConfig(min_bytes=0), "unsupported_format"),
        (generated_bytes("bitmap", "bmp", 100, 100), ImageConfig(min_bytes=0), "unsupported_format"),
        (photo_bytes("astronaut", "jpg")[:20_000], ImageConfig(), "decode_error"),
        (b"<!doctype html><html>" + b" " * 6000 + b"</html>", ImageConfig(), "not_image"),
    ],
    ids=["too_small", "bomb", "over_max_pixels", "gif", "bmp", "truncated", "html"],
)
def test_rejections_carry_their_status(body: bytes, config: ImageConfig, status: str):
    with pytest.raises(ImageRejected) as rejected:
        decode(body, config)
    assert rejected.value.status == status
    assert rejected.value.message


def test_formats_are_configurable():
    gif = generated_bytes("anim", "gif", 200, 200)
    decoded = decode(gif, ImageConfig(min_bytes=0, formats=("JPEG", "PNG", "WEBP", "GIF")))
    assert decoded.image.mode == "RGB" and decoded.image.size == (256, 256)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="resize_mode"):
        ImageConfig(resize_mode="stretch")
