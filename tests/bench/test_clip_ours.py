"""bench/clip's CUDA hand-over on the CPU: the demo models take raw uint8 batches and embed them as
the per-image preprocessing does, so the row measures the CUDA decode path's CPU honestly."""

from __future__ import annotations

import numpy as np
import torch

from altlake_cli.image_server import photo_bytes
from bench.clip.ours import raw_pixel_hand_over
from gpu_workers.images import ImageConfig, decode
from gpu_workers.models import ModelSpec, load_models


def test_raw_pixels_hand_over_embeds_like_per_image_preprocessing():
    models = load_models(ModelSpec(nsfw_head=None, watermark_head=None, aesthetic_head=None))
    assert not models.preprocesses_on_device  # the CPU default: per-image PIL transforms
    config = ImageConfig(size=256, resize_mode="border")
    decoded = [decode(photo_bytes(name, "jpg", 600), config) for name in ("astronaut", "chelsea", "coffee", "rocket")]
    per_image = models.embed_images(models.preprocess([d.image for d in decoded]))

    raw_pixel_hand_over(models)

    assert models.preprocesses_on_device
    batched = models.embed_images(torch.from_numpy(np.stack([d.pixels for d in decoded])))
    cosines = np.sum(per_image * batched, axis=1)
    assert (cosines > 0.99).all(), cosines
