"""PDQ perceptual hashes: what the worker stores per image and what `pdq` takedowns match.

PDQ is the open 256-bit perceptual hash used for sharing hashes of harmful images (Meta's
ThreatExchange). A resized, re-encoded or slightly cropped copy of an image stays within a small
Hamming distance of the original's hash, where a cryptographic digest changes completely.

One definition for every caller: the worker hashes the content of the image it stored (the
resized picture without img2dataset's border), and `altlake takedown add --image` hashes a file
the same way, so both sides see the same pixels up to resampling. Images are brought to at most
HASH_SIDE pixels on the longer side first, as PDQ's reference recommends downsampling before
hashing: the hash does not change in substance and the cost stays under a millisecond.
"""

from __future__ import annotations

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

    try:
        import pdqhash
    except ImportError as error:  # the worker and CLI install it; say what is missing, not a traceback
        raise ValueError(f"perceptual hashing needs the pdqhash package ({error})") from error
    bits, quality = pdqhash.compute(np.ascontiguousarray(_hashed_pixels(image), dtype=np.uint8))
    return np.packbits(bits.astype(np.uint8)).tobytes().hex(), int(quality)


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
