"""Decode, validate, resize and hash downloaded images (the scoring worker's "resizer").

LAION's rules: drop bodies under a minimum size, refuse more than 89,478,484 pixels before any
pixel is decoded (header only), accept JPEG / PNG / WebP. Resizing follows img2dataset's modes so
shards are interchangeable with theirs. JPEGs are decoded at a reduced DCT scale when the target is
much smaller (Pillow's draft mode): the single biggest CPU saving of the worker.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

LAION_MAX_PIXELS = 89_478_484
RESIZE_MODES = ("border", "keep_ratio", "center_crop", "no")
REJECT_STATUSES = ("too_small", "too_many_pixels", "unsupported_format", "decode_error", "not_image")

# Pillow's own bomb guard stays on (someone may have set it to None); ours is the exact check below.
if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > LAION_MAX_PIXELS + 1:
    Image.MAX_IMAGE_PIXELS = LAION_MAX_PIXELS + 1


class ImageRejected(ValueError):
    """An image body the dataset must not contain; `status` is a DOWNLOAD_FAILURES class."""

    def __init__(self, status: str, message: str) -> None:
        assert status in REJECT_STATUSES, status
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


@dataclass(frozen=True)
class ImageConfig:
    min_bytes: int = 5_000  # LAION-400M/5B dropped images under 5 KB
    max_pixels: int = LAION_MAX_PIXELS
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")  # Pillow format names
    resize_mode: str = "border"  # border | keep_ratio | center_crop | no (img2dataset semantics)
    size: int | None = 256  # storage size; None keeps the original pixels
    encode_format: str | None = "jpg"  # jpg | png | webp for stored_bytes, None to skip encoding
    encode_quality: int = 95

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, not {self.resize_mode!r}")
        if self.encode_format not in (None, "jpg", "png", "webp"):
            raise ValueError(f"encode_format must be jpg, png, webp or None, not {self.encode_format!r}")


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, resized for storage (or the original when size is None / mode "no")
    original_width: int
    original_height: int
    width: int
    height: int
    sha256: str  # of the original bytes, as downloaded
    md5: str
    stored_bytes: bytes | None  # `image` encoded per ImageConfig.encode_format, for shards


def decode(body: bytes, config: ImageConfig) -> DecodedImage:
    """Validate and decode one downloaded body; raise ImageRejected with a reason otherwise."""
    if len(body) < config.min_bytes:
        raise ImageRejected("too_small", f"{len(body)} bytes < minimum {config.min_bytes}")
    image = _open_checked(body, config)
    original_width, original_height = image.size
    target = _target_size(image.size, config)
    try:
        if target is not None and image.format == "JPEG":
            image.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale, never below target
        image.load()
        image = _to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, ... on bad data
        raise ImageRejected("decode_error", f"{type(exc).__name__}: {exc}") from exc
    if config.size is not None and config.resize_mode != "no":
        image = resize(image, config.size, config.resize_mode)
    return DecodedImage(
        image=image,
        original_width=original_width,
        original_height=original_height,
        width=image.width,
        height=image.height,
        sha256=hashlib.sha256(body).hexdigest(),
        md5=hashlib.md5(body, usedforsecurity=False).hexdigest(),
        stored_bytes=encode(image, config.encode_format, config.encode_quality) if config.encode_format else None,
    )


def _open_checked(body: bytes, config: ImageConfig) -> Image.Image:
    """Open (header only) and check format and pixel count before anything is decoded."""
    try:
        image = Image.open(io.BytesIO(body))
    except Image.DecompressionBombError as exc:  # Pillow's own guard, at twice its MAX_IMAGE_PIXELS
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_image", f"not a recognised image ({body[:16]!r}...)") from exc
    except Exception as exc:  # noqa: BLE001 - a recognised but broken header
        raise ImageRejected("decode_error", f"bad header: {type(exc).__name__}: {exc}") from exc
    if image.format not in config.formats:
        raise ImageRejected("unsupported_format", f"{image.format} is not one of {', '.join(config.formats)}")
    width, height = image.size
    if width * height > config.max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height} = {width * height} pixels > {config.max_pixels}")
    if width < 1 or height < 1:
        raise ImageRejected("decode_error", f"empty image {width}x{height}")
    return image


def _target_size(size: tuple[int, int], config: ImageConfig) -> tuple[int, int] | None:
    """The smallest decoded size that still gives full quality at the storage size."""
    if config.size is None or config.resize_mode == "no":
        return None
    width, height = size
    side = max(width, height) if config.resize_mode == "border" else min(width, height)
    scale = config.size / side
    if scale >= 1:
        return None
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency flattened onto white (as img2dataset does)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def resize(image: Image.Image, size: int, mode: str) -> Image.Image:
    """img2dataset's resize modes on an RGB image.

    border: longest side to `size`, then centred on a white size x size square.
    keep_ratio: shortest side to `size`, aspect ratio kept.
    center_crop: shortest side to `size`, then the centred size x size square.
    no: unchanged.
    """
    if mode == "no":
        return image
    width, height = image.size
    if mode == "border":
        image = _scale(image, size / max(width, height))
        if image.size == (size, size):
            return image
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
        return canvas
    if mode == "keep_ratio":
        return _scale(image, size / min(width, height))
    if mode == "center_crop":
        image = _scale(image, size / min(width, height))
        left, top = (image.width - size) // 2, (image.height - size) // 2
        return image.crop((left, top, left + size, top + size))
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {mode!r}")


def _scale(image: Image.Image, scale: float) -> Image.Image:
    """Area averaging when shrinking (cv2 INTER_AREA's job), Lanczos when enlarging."""
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if new_size == image.size:
        return image
    shrinking = new_size[0] < image.width
    return image.resize(new_size, Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS)


def encode(image: Image.Image, fmt: str, quality: int = 95) -> bytes:
    """Encode for storage in shards (jpg / png / webp)."""
    buffer = io.BytesIO()
    pil_format = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
    image.save(buffer, pil_format, **({"quality": quality} if pil_format != "PNG" else {}))
    return buffer.getvalue()

