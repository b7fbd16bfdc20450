"""The benchmark's input: real-size JPEGs cut from the real sample photos, and a url-list parquet.

Cached under the altlake cache dir (never in the repo), keyed by count and size, so reruns only
pay for the measurement.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps
from tqdm import tqdm

from altlake_cli.image_server import photo_files


def make_images(folder: Path, count: int, size: int) -> list[str]:
    """`count` distinct JPEGs about `size` px on the long side (random crops, flips, qualities)."""
    done = folder / ".complete"
    names = [f"{i:05d}.jpg" for i in range(count)]
    if done.exists():
        return names
    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.open(path).convert("RGB") for path in photo_files().values()]
    photos = [p for p in photos if min(p.size) >= 256]  # skip the tiny samples
    for i, name in enumerate(tqdm(names, desc="bench images", unit="img")):
        rng = random.Random(i)
        photo = photos[i % len(photos)]
        crop_w, crop_h = (int(side * rng.uniform(0.6, 1.0)) for side in photo.size)
        left, top = rng.randrange(photo.width - crop_w + 1), rng.randrange(photo.height - crop_h + 1)
        image = photo.crop((left, top, left + crop_w, top + crop_h))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        long_side = rng.randint(int(size * 0.85), int(size * 1.1))
        scale = long_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        image.save(folder / name, "JPEG", quality=rng.randint(80, 92))
    done.touch()
    return names


def write_url_list(path: Path, base_url: str, names: list[str]) -> None:
    """The same parquet both tools read: url + caption columns."""
    urls = [f"{base_url}/files/{name}" for name in names]
    captions = [f"sample photo {name}" for name in names]
    pq.write_table(pa.table({"key": [n.removesuffix(".jpg") for n in names], "url": urls, "caption": captions}), path)
