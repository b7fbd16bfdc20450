"""Decode, validate, resize and hash downloaded images (the scoring worker's "resizer").

LAION's rules: drop bodies under a minimum size, refuse more than 89,478,484 pixels before any
pixel is decoded (header only), accept JPEG / PNG / WebP. The header must also pass side limits
(a minimum side drops tracking pixels and icons, a maximum side and aspect ratio drop 200,000 x 1
strips whose later resizes would cost gigabytes), and a JPEG whose data ends before the frame its
header declares is refused rather than recorded at the claimed size over grey fill. Resizing
follows img2dataset's modes so shards are interchangeable with theirs; output sizes always come from the original dimensions, so
every decoder (this one, the batched one in gpu_workers.batch_decode) yields the same geometry.

Decoding is the worker's biggest CPU cost, so ordinary JPEGs (YCbCr or greyscale, i.e. nearly all
of them) go through simplejpeg: libjpeg-turbo decodes them at a reduced DCT scale, the smallest of
1/8, 1/4, 1/2 and full that is still at least the target size (full-quality IDCT and upsampling).
Those four scales have SIMD inverse DCTs; libjpeg-turbo's 3/8 costs as much as its 1/2, and 5/8
to 7/8 more than a full decode (1.5, 2.2-3.4 ms against 1.4 and 1.9 ms for a ~1000 px photo).
Anything simplejpeg does not take (CMYK, a damaged stream, PNG, WebP) goes through Pillow, which
is also the judge of every rejection.

From there the pixels stay a numpy array (RGB, height x width x 3, uint8): OpenCV resizes and
re-encodes them and PDQ hashes the picture inside the frame. Pillow keeps every RGB pixel in 4 bytes, so
each hand-over between numpy and Pillow costs a copy and a repack (0.1-0.2 ms per image at
256 px); a PIL image is only made for the transforms that need one (`DecodedImage.image`).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from altlake.perceptual import pdq_hash
from gpu_workers.stage_clock import NO_CLOCK, StageClock

LAION_MAX_PIXELS = 89_478_484
RESIZE_MODES = ("border", "keep_ratio", "center_crop", "no")
REJECT_STATUSES = ("too_small", "too_many_pixels", "unsupported_format", "decode_error", "not_image")
JPEG_SOI = b"\xff\xd8\xff"
JPEG_SOS = b"\xff\xda"  # start of scan: the entropy-coded data follows
# JPEG colour spaces decoded outside Pillow; Adobe CMYK / YCCK need Pillow's inversion handling.
FAST_JPEG_COLORSPACES = ("YCbCr", "Gray")

# The worker decodes many images in parallel threads; OpenCV's own thread pool would only contend with them.
cv2.setNumThreads(1)
# Bound for a shrink by linear interpolation: below it every source pixel still lands within one
# step of a sample, so it is as sharp as area averaging (35.1 vs 35.2 dB PSNR against a full-size
# Lanczos on the bench photos) at a fifth of the cost; at 2x and beyond only area averaging avoids aliasing.
LINEAR_SHRINK_LIMIT = 2.0
ENCODINGS = {"jpg": ".jpg", "png": ".png", "webp": ".webp"}
# libjpeg-turbo's DCT scales, in eighths, that have SIMD inverse DCTs (see the module docstring).
SIMD_SCALES = (1, 2, 4, 8)

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
    min_side: int = 10  # shorter side, pixels: tracking pixels and icons are not pictures
    max_side: int = 30_000  # longer side, pixels
    max_aspect_ratio: float = 20.0  # longer side / shorter side
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")  # Pillow format names
    resize_mode: str = "border"  # border | keep_ratio | center_crop | no (img2dataset semantics)
    size: int | None = 256  # storage size; None keeps the original pixels
    encode_format: str | None = "jpg"  # jpg | png | webp for stored_bytes, None to skip encoding
    encode_quality: int = 95

    def __post_init__(self) -> None:
        if self.min_side < 1 or self.max_side < self.min_side or self.max_aspect_ratio < 1:
            raise ValueError(f"need 1 <= min_side <= max_side and max_aspect_ratio >= 1, not {self.min_side}, {self.max_side}, {self.max_aspect_ratio}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, not {self.resize_mode!r}")
        if self.encode_format is not None and self.encode_format not in ENCODINGS:
            raise ValueError(f"encode_format must be jpg, png, webp or None, not {self.encode_format!r}")

    @property
    def square_output(self) -> bool:
        """Every stored image is size x size (border pads, center_crop crops): a batch of them stacks."""
        return self.size is not None and self.resize_mode in ("border", "center_crop")


@dataclass(frozen=True)
class Header:
    """What is known before any pixel is decoded; every check on it has passed."""

    format: str  # Pillow format name: JPEG, PNG, WEBP, ...
    width: int
    height: int
    jpeg_colorspace: str | None = None  # from the JPEG header when read without Pillow
    opened: Image.Image | None = field(default=None, repr=False, compare=False)  # Pillow's lazy image, if it read the header

    @property
    def plain_jpeg(self) -> bool:
        """A YCbCr / greyscale JPEG: what libjpeg-turbo (and nvJPEG) decode straight to RGB."""
        return self.format == "JPEG" and self.jpeg_colorspace in FAST_JPEG_COLORSPACES


@dataclass(eq=False)  # arrays do not compare as a truth value
class DecodedImage:
    pixels: np.ndarray  # RGB (height, width, 3) uint8, resized for storage (or the original when size is None / mode "no")
    original_width: int
    original_height: int
    width: int
    height: int
    sha256: str  # of the original bytes, as downloaded
    md5: str
    pdq: str  # PDQ perceptual hash of the picture (altlake.perceptual), without any border
    pdq_quality: int
    stored_bytes: bytes | None  # `pixels` encoded per ImageConfig.encode_format, for shards

    @cached_property
    def image(self) -> Image.Image:
        """The pixels as a PIL image, for transforms written for Pillow; made on first use."""
        return Image.fromarray(self.pixels)


def decode(body: bytes, config: ImageConfig, clock: StageClock = NO_CLOCK) -> DecodedImage:
    """Validate and decode one downloaded body; raise ImageRejected with a reason otherwise."""
    with clock.stage("check"):
        header = read_header(body, config)
        target = target_size(header, config)
    with clock.stage("decode"):
        pixels = decode_plain_jpeg(body, header, target) if header.plain_jpeg else None
        if pixels is None:  # everything else, and any JPEG libjpeg-turbo refused: Pillow decodes or names the failure
            pixels = np.asarray(_decode_with_pillow(body, header, target, config))
        if config.size is not None and config.resize_mode != "no":
            pixels = resize(pixels, config.size, config.resize_mode, original_size=(header.width, header.height))
    with clock.stage("hash"):
        return finish(body, header, pixels, config)


def finish(body: bytes, header: Header, pixels: np.ndarray, config: ImageConfig) -> DecodedImage:
    """The result for RGB pixels already at storage size: hashes of the body and the picture, bytes for shards."""
    pdq, pdq_quality = pdq_hash(picture(pixels, header, config))
    return DecodedImage(
        pixels=pixels,
        original_width=header.width,
        original_height=header.height,
        width=pixels.shape[1],
        height=pixels.shape[0],
        sha256=hashlib.sha256(body).hexdigest(),
        md5=hashlib.md5(body, usedforsecurity=False).hexdigest(),
        pdq=pdq,
        pdq_quality=pdq_quality,
        stored_bytes=encode(pixels, config.encode_format, config.encode_quality) if config.encode_format else None,
    )


def picture(pixels: np.ndarray, header: Header, config: ImageConfig) -> np.ndarray:
    """The stored image without the white frame border mode adds (a view of it): what the
    perceptual hash sees, so the same picture hashes alike whatever its aspect ratio or resize mode."""
    if config.size is None or config.resize_mode != "border":
        return pixels
    width, height = scaled_size((header.width, header.height), config.size, "border")
    left, top = border_offsets((width, height), config.size, "border")
    return pixels[top : top + height, left : left + width]


def read_header(body: bytes, config: ImageConfig) -> Header:
    """Every check made before a pixel is decoded: byte size, format allow-list, pixel count."""
    if len(body) < config.min_bytes:
        raise ImageRejected("too_small", f"{len(body)} bytes < minimum {config.min_bytes}")
    header = _plain_jpeg_header(body) if "JPEG" in config.formats else None
    if header is None:
        header = _pillow_header(body)
    if header.format not in config.formats:
        raise ImageRejected("unsupported_format", f"{header.format} is not one of {', '.join(config.formats)}")
    width, height = header.width, header.height
    if width * height > config.max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height} = {width * height} pixels > {config.max_pixels}")
    if width < 1 or height < 1:
        raise ImageRejected("decode_error", f"empty image {width}x{height}")
    if max(width, height) > config.max_side:
        raise ImageRejected("too_many_pixels", f"{width}x{height}: a side over {config.max_side} pixels")
    if max(width, height) > config.max_aspect_ratio * min(width, height):
        raise ImageRejected("too_many_pixels", f"{width}x{height}: aspect ratio over {config.max_aspect_ratio:g}")
    if min(width, height) < config.min_side:
        raise ImageRejected("too_small", f"{width}x{height}: a side under {config.min_side} pixels")
    return header


def _plain_jpeg_header(body: bytes) -> Header | None:
    """The JPEG frame header read by libjpeg-turbo (no Python marker walk); None if not a plain JPEG.

    A frame whose entropy-coded data is shorter than any encoder could make it (a 480 x 480 picture
    whose header claims 9000 x 9000) is refused here, before any decoder, the batched GPU one
    included, fills the missing rows with grey."""
    if not body.startswith(JPEG_SOI):
        return None
    try:
        height, width, colorspace, _subsampling = simplejpeg.decode_jpeg_header(body)
    except ValueError:
        return None  # Pillow reads it again and names the problem
    if colorspace not in FAST_JPEG_COLORSPACES:
        return None
    scan = body.find(JPEG_SOS)
    needed = -(-width // 8) * -(-height // 8) // 8  # every 8x8 luma block codes at least a 1-bit DC symbol
    if scan < 0 or len(body) - scan < needed:
        raise ImageRejected("decode_error", f"JPEG data of {len(body)} bytes is too short for its {width}x{height} frame")
    return Header("JPEG", width, height, colorspace)


def _pillow_header(body: bytes) -> Header:
    try:
        image = Image.open(io.BytesIO(body))
    except Image.DecompressionBombError as exc:  # Pillow's own guard, at twice its MAX_IMAGE_PIXELS
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_image", f"not a recognised image format ({len(body)} bytes)") from exc
    except Exception as exc:  # noqa: BLE001 - a recognised but broken header
        raise ImageRejected("decode_error", f"bad header: {type(exc).__name__}: {exc}") from exc
    # A camera's multi-picture JPEG is a JPEG whose first frame is the picture, as browsers show it.
    fmt = "JPEG" if image.format == "MPO" else image.format
    return Header(fmt, image.width, image.height, opened=image)


def decode_plain_jpeg(body: bytes, header: Header, target: tuple[int, int] | None) -> np.ndarray | None:
    """RGB pixels at the smallest SIMD DCT scale >= target; None when libjpeg-turbo refuses the
    stream for a reason Pillow may forgive (extraneous bytes, say), which Pillow then judges.

    Data that ends before the declared frame is covered is refused here: Pillow would fill the rest
    with grey and report the header's size (a 480 x 480 picture claiming 9000 x 9000).
    """
    min_width = min_height = 0
    if target is not None:
        eighths = max(-(-8 * target[0] // header.width), -(-8 * target[1] // header.height))
        scale = next((k for k in SIMD_SCALES if k >= eighths), 8)
        # simplejpeg takes the smallest scale whose ceil(side * k / 8) reaches these.
        min_width, min_height = -(-header.width * scale // 8), -(-header.height * scale // 8)
    try:
        return simplejpeg.decode_jpeg(body, "RGB", min_width=min_width, min_height=min_height)
    except ValueError as exc:  # strict: libjpeg-turbo's warnings are errors
        if "premature end" in str(exc).lower():
            raise ImageRejected("decode_error", f"JPEG data ends before its {header.width}x{header.height} frame is complete ({exc})") from exc
        return None


def _decode_with_pillow(body: bytes, header: Header, target: tuple[int, int] | None, config: ImageConfig) -> Image.Image:
    image = header.opened if header.opened is not None else _pillow_header(body).opened
    try:
        if target is not None and image.format in ("JPEG", "MPO"):
            image.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale, never below target
        image.load()
        return _to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, ... on bad data
        raise ImageRejected("decode_error", f"{type(exc).__name__}: {exc}") from exc


def target_size(header: Header, config: ImageConfig) -> tuple[int, int] | None:
    """The smallest decoded size that still gives full quality at the storage size (None: full size)."""
    if config.size is None or config.resize_mode == "no":
        return None
    scaled = scaled_size((header.width, header.height), config.size, config.resize_mode)
    return scaled if scaled[0] < header.width else None


def scaled_size(size: tuple[int, int], target: int, mode: str) -> tuple[int, int]:
    """img2dataset's geometry: border fits the longest side to `target`, the other modes the shortest."""
    width, height = size
    scale = target / (max(width, height) if mode == "border" else min(width, height))
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


def resize(pixels: np.ndarray, size: int, mode: str, original_size: tuple[int, int] | None = None) -> np.ndarray:
    """img2dataset's resize modes on RGB pixels (height, width, 3).

    border: longest side to `size`, then centred on a white size x size square.
    keep_ratio: shortest side to `size`, aspect ratio kept.
    center_crop: shortest side to `size`, then the centred size x size square.
    no: unchanged.
    `original_size` is the size before a reduced-scale decode: the output geometry follows it, so
    it does not depend on which DCT scale the decoder picked.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {mode!r}")
    if mode == "no":
        return pixels
    height, width = pixels.shape[:2]
    new_width, new_height = scaled_size(original_size or (width, height), size, mode)
    if (new_width, new_height) != (width, height):
        pixels = cv2.resize(pixels, (new_width, new_height), interpolation=_interpolation(width / new_width))
    left, top = border_offsets((new_width, new_height), size, mode)
    if mode == "border" and (new_width, new_height) != (size, size):
        canvas = np.full((size, size, 3), 255, dtype=np.uint8)
        canvas[top : top + new_height, left : left + new_width] = pixels
        return canvas
    if mode == "center_crop":
        return np.ascontiguousarray(pixels[top : top + size, left : left + size])
    return pixels


def _interpolation(shrink: float) -> int:
    """img2dataset's filters (area averaging down, Lanczos up), with linear interpolation for the
    small shrink left after a reduced-scale decode (see LINEAR_SHRINK_LIMIT)."""
    if shrink < 1:
        return cv2.INTER_LANCZOS4
    return cv2.INTER_LINEAR if shrink < LINEAR_SHRINK_LIMIT else cv2.INTER_AREA


def border_offsets(scaled: tuple[int, int], size: int, mode: str) -> tuple[int, int]:
    """Where the scaled image sits: its offset on the border canvas, or the crop's corner in it."""
    width, height = scaled
    if mode == "border":
        return (size - width) // 2, (size - height) // 2
    return (width - size) // 2, (height - size) // 2


def encode(pixels: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    """Encode RGB pixels for storage in shards (jpg with 4:2:0 chroma, as Pillow and img2dataset / png / webp)."""
    params = {"jpg": [cv2.IMWRITE_JPEG_QUALITY, quality], "webp": [cv2.IMWRITE_WEBP_QUALITY, quality], "png": []}[fmt]
    ok, data = cv2.imencode(ENCODINGS[fmt], cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {pixels.shape} image as {fmt}")
    return data.tobytes()

