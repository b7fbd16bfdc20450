"""The batched (GPU) decoder, run here with device="cpu": same checks, statuses and geometry as the
Pillow / libjpeg-turbo path, close pixels, and a bad stream never fails its batch-mates.

No GPU is available to this suite: these tests exercise the code that runs with device="cuda",
but nvJPEG itself is only exercised where a GPU is lent.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from altlake_cli.image_server import bomb_png, generated_bytes, photo_bytes
from gpu_workers.batch_decode import BatchDecoder, uses_batch_decoder
from gpu_workers.images import DecodedImage, ImageConfig, ImageRejected, decode

PHOTOS = [photo_bytes(name, "jpg", size) for name, size in (("astronaut", 512), ("chelsea", 300), ("coffee", 420), ("rocket", 120))]


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(PHOTOS[1])).convert("CMYK").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


def cpu_outcome(body: bytes, config: ImageConfig) -> DecodedImage | ImageRejected:
    try:
        return decode(body, config)
    except ImageRejected as rejected:
        return rejected


@pytest.mark.parametrize("mode", ["border", "center_crop", "keep_ratio"])
def test_real_photos_match_the_cpu_path(mode: str):
    config = ImageConfig(size=160, resize_mode=mode, min_bytes=0)
    batched = BatchDecoder(config, "cpu").decode(PHOTOS)
    for body, got in zip(PHOTOS, batched, strict=True):
        want = decode(body, config)
        assert isinstance(got, DecodedImage)
        assert got.image.mode == "RGB"
        assert got.image.size == (got.width, got.height) == want.image.size
        assert (got.original_width, got.original_height) == (want.original_width, want.original_height)
        assert (got.sha256, got.md5) == (want.sha256, want.md5)
        # Full decode + area on the device vs reduced-scale DCT + Pillow BOX: close, not identical.
        assert mean_abs_diff(got.image, want.image) < 6.0
        with Image.open(io.BytesIO(got.stored_bytes)) as stored:
            assert (stored.format, stored.size) == ("JPEG", got.image.size)


def test_border_padding_is_white_where_the_cpu_path_pads():
    config = ImageConfig(size=128, resize_mode="border", min_bytes=0)
    wide = generated_bytes("wide", "jpg", 400, 200)
    [got] = BatchDecoder(config, "cpu").decode([wide])
    want = decode(wide, config)
    assert got.image.size == (128, 128)
    top_band = np.asarray(got.image)[:20]
    assert (top_band == 255).all() and (np.asarray(want.image)[:20] == 255).all()


def test_mixed_batch_keeps_order_and_the_cpu_statuses():
    config = ImageConfig(size=96, min_bytes=2_000)
    bodies = [
        PHOTOS[0],
        PHOTOS[0][: len(PHOTOS[0]) // 2],  # truncated JPEG, in the middle of good ones
        photo_bytes("coffee", "png", 200),
        photo_bytes("coffee", "webp", 200),
        bomb_png(),
        generated_bytes("anim", "gif", 200, 200),
        photo_bytes("coffee", "jpg", 20),  # under min_bytes
        b"<!doctype html><html>" + b" " * 3000 + b"</html>",
        cmyk_jpeg(),
        PHOTOS[2],
    ]
    batched = BatchDecoder(config, "cpu").decode(bodies)
    assert len(batched) == len(bodies)
    statuses = []
    for body, got in zip(bodies, batched, strict=True):
        want = cpu_outcome(body, config)
        assert type(got) is type(want)
        if isinstance(want, ImageRejected):
            assert got.status == want.status and got.message
            statuses.append(got.status)
        else:
            assert got.image.size == want.image.size and got.sha256 == want.sha256
            statuses.append("ok")
    expected = ["ok", "decode_error", "ok", "ok", "too_many_pixels", "unsupported_format", "too_small", "not_image", "ok", "ok"]
    assert statuses == expected


def test_a_small_pixel_budget_splits_the_batch_without_changing_results():
    config = ImageConfig(size=64, min_bytes=0)
    whole = BatchDecoder(config, "cpu").decode(PHOTOS)
    one_by_one = BatchDecoder(config, "cpu", max_batch_pixels=1).decode(PHOTOS)
    for a, b in zip(whole, one_by_one, strict=True):
        assert a.sha256 == b.sha256
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_no_resize_keeps_the_original_pixels():
    config = ImageConfig(size=None, min_bytes=0, encode_format=None)
    [got] = BatchDecoder(config, "cpu").decode([PHOTOS[3]])
    want = decode(PHOTOS[3], config)
    assert got.image.size == want.image.size == (want.original_width, want.original_height)
    assert got.stored_bytes is None
    assert mean_abs_diff(got.image, want.image) < 2.0  # the same libjpeg-turbo IDCT at full scale


def test_auto_uses_the_batch_decoder_only_on_cuda():
    assert uses_batch_decoder("auto", "cuda") and uses_batch_decoder("gpu", "cuda")
    assert not uses_batch_decoder("auto", "cpu") and not uses_batch_decoder("cpu", "cuda")
    assert uses_batch_decoder("gpu", "cpu")  # the tests' way to run the CUDA code path
    with pytest.raises(ValueError, match="decode must be one of"):
        uses_batch_decoder("nvjpeg", "cuda")
