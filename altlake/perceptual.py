"""PDQ perceptual hashes: what the worker stores per image and what `pdq` takedowns match.

PDQ is the open 256-bit perceptual hash used for sharing hashes of harmful images (Meta's
ThreatExchange). A resized, re-encoded or slightly cropped copy of an image stays within a small
Hamming distance of the original's hash, where a cryptographic digest changes completely.

One definition for every caller: the worker hashes the content of the image it stored (the
resized picture without img2dataset's border), and `altlake takedown add --image` hashes a file
the same way, so both sides see the same pixels up to resampling. Images are brought to at most
HASH_SIDE pixels on the longer side first, as PDQ's reference recommends downsampling before
hashing: the hash does not change in substance and the cost stays at about 0.2 ms.
"""

from __future__ import annotations

import functools
import re

HASH_HEX = 64  # 256 bits
HASH_SIDE = 256  # longest side hashed, pixels
# ThreatExchange's recommended match threshold for PDQ: distances up to 31 of 256 bits.
DEFAULT_MAX_DISTANCE = 31
MAX_DISTANCE_LIMIT = 128  # beyond half the bits a "match" says nothing
MIN_QUALITY = 50  # below it an image is too flat for its hash to identify it (ThreatExchange's cut)
_HEX = re.compile(r"^[0-9a-f]{64}$")


def pdq_hash(image) -> tuple[str, int]:
    """(64 hex digits, PDQ quality 0-100) of a PIL image or of RGB pixels (height, width, 3 uint8);
    quality under 50 marks a flat image whose hash matches too easily (ThreatExchange drops those
    before matching)."""
    import numpy as np

    pixels = _hashed_pixels(image)
    rows, cols = pixels.shape[:2]
    if rows < _MIN_HASHABLE_SIDE or cols < _MIN_HASHABLE_SIDE:  # the reference's answer: no hash
        return "0" * HASH_HEX, 0
    row_taps, row_weights = _blur_and_decimate(rows)
    col_taps, col_weights = _blur_and_decimate(cols)
    # Only the rows the grid reads, then luma, then the blur of rows and of columns as a few
    # multiply-adds per grid value: no matrix products (BLAS would start threads that spin).
    taps = pixels[row_taps].astype(np.float32)  # 64 x n x cols x 3
    luma = taps[..., 0] * _LUMA_R + taps[..., 1] * _LUMA_G + taps[..., 2] * _LUMA_B
    blurred_rows = np.einsum("gt,gtw->gw", row_weights, luma)  # 64 x cols
    grid = np.einsum("gt,rgt->rg", col_weights, blurred_rows[:, col_taps])  # 64 x 64
    quality = _quality(grid)
    dct = _dct()
    coefficients = (dct @ grid @ dct.T).ravel()  # 16 x 16, row-major as the reference's bits
    median = np.partition(coefficients, 127)[127]  # the lower median, as the reference's torben()
    return np.packbits(coefficients[::-1] > median).tobytes().hex(), quality


# PDQ's definition (ThreatExchange pdq/cpp): luma, two passes of a Jarosz box blur along each axis
# sized to the 64 x 64 grid, decimation to that grid, a 16 x 16 DCT, one bit per coefficient above
# the median. Blur and decimation are linear: each grid value is a weighted sum of a few rows and
# columns, the same numbers as the reference's running sums (identical hashes on photos) at 0.22 ms
# of CPU per 256 px picture against 0.57 for its pdqhash binding, which converts the whole picture
# to float64 and loops over the bits in Python.
_GRID = 64
_MIN_HASHABLE_SIDE = 5
_LUMA_R, _LUMA_G, _LUMA_B = 0.299, 0.587, 0.114  # numpy keeps float32 pixels float32 with these


@functools.cache
def _dct():
    import numpy as np

    i, j = np.arange(1, 17)[:, None], np.arange(_GRID)[None, :]
    return (np.sqrt(2.0 / _GRID) * np.cos(np.pi / 2.0 / _GRID * i * (2 * j + 1))).astype(np.float32)


@functools.lru_cache(maxsize=512)
def _blur_and_decimate(side: int):
    """(taps, weights), each 64 x n: grid value g along one axis is the sum over t of
    weights[g, t] * input[taps[g, t]], i.e. the reference's box1DFloat applied twice, then its
    decimateFloat (n is 3 for the sides the worker hashes; unused taps weigh 0)."""
    import numpy as np

    window = (side + 2 * _GRID - 1) // (2 * _GRID)  # computeJaroszFilterWindowSize
    ahead = (window + 2) // 2  # box1DFloat averages in[o - (window - ahead)] .. in[o + ahead - 1]
    out = np.arange(side)
    first, end = np.maximum(out - (window - ahead), 0), np.minimum(out + ahead, side)
    picked = ((np.arange(_GRID) + 0.5) * side / _GRID).astype(int)  # decimateFloat's sample points
    # Second pass at the picked points: at most `window` first-pass outputs each, with their weights.
    inner = first[picked][:, None] + np.arange(window)[None, :]  # 64 x window
    weight = np.where(inner < end[picked][:, None], 1 / (end - first)[picked][:, None], 0.0)
    inner = np.minimum(inner, side - 1)
    # First pass at those outputs: box rows over the input, 64 x window x side, never side x side
    # (a dense product cost 2.2 ms per new side, paid again for every aspect ratio a run meets).
    inputs = np.arange(side)
    box = ((inputs >= first[inner][..., None]) & (inputs < end[inner][..., None])) / (end - first)[inner][..., None]
    blur = np.einsum("gj,gjk->gk", weight, box)  # 64 x side, a band; einsum: no BLAS threads
    width = int((blur != 0).sum(axis=1).max())
    lowest = np.clip((blur != 0).argmax(axis=1), 0, side - width)
    taps = lowest[:, None] + np.arange(width)[None, :]
    return taps, np.take_along_axis(blur, taps, axis=1).astype(np.float32)


def _quality(grid) -> int:
    """The reference's pdqImageDomainQualityMetric: summed truncated gradients of the 64 x 64 grid."""
    import numpy as np

    down = np.abs(np.trunc((grid[:-1, :] - grid[1:, :]) * 100 / 255)).sum()
    across = np.abs(np.trunc((grid[:, :-1] - grid[:, 1:]) * 100 / 255)).sum()
    return min(int(down + across) // 90, 100)


def _hashed_pixels(image):
    """RGB pixels at most HASH_SIDE on the longer side; pixels already that small pass as they are."""
    import numpy as np
    from PIL import Image

    if isinstance(image, np.ndarray):
        if max(image.shape[:2]) <= HASH_SIDE:  # the worker's stored pixels, hashed at their size
            return image
        image = Image.fromarray(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if max(image.size) > HASH_SIDE:
        image = image.copy()
        image.thumbnail((HASH_SIDE, HASH_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(image)


def pdq_of_file(path: str) -> tuple[str, int]:
    """(hash, quality) of an image file, for a `pdq` takedown request of that picture."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return pdq_hash(image)
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: not an image this platform can read ({error})") from error


def is_pdq(value: str) -> bool:
    return bool(_HEX.match(value))


def distance(a: str, b: str) -> int:
    """Hamming distance of two PDQ hashes in hex: the bits that differ, 0 to 256."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
