"""Batched JPEG decode and resize with torchvision: nvJPEG and CUDA kernels when the worker has a GPU.

On a GPU node the CPU, not the GPU, limits how many images per second the worker scores: a
~1000 px JPEG costs a CPU core ~3 ms to decode and resize, against well under a millisecond of
GPU time. So when the models run on CUDA, plain JPEGs (YCbCr / greyscale, nearly all of the web's
images) are decoded in batches by `torchvision.io.decode_jpeg(..., device="cuda")` and resized
there; the CPU only reads headers, hashes and re-encodes the small results.

Everything before decoding stays exactly as on the CPU path (`images.read_header`: byte size,
format allow-list, pixel count from the header), output geometry comes from the same
`images.scaled_size` / `images.border_offsets`, and anything the batch decoder does not take or
fails on (PNG, WebP, CMYK, a damaged stream) goes through `images.decode`, so statuses are the CPU
path's. The same code runs with device="cpu", which is how the tests compare it with Pillow.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from altlake.config import WORKER_DECODES
from gpu_workers.images import (
    DecodedImage,
    Header,
    ImageConfig,
    ImageRejected,
    border_offsets,
    decode,
    finish,
    read_header,
    scaled_size,
)
from gpu_workers.stage_clock import NO_CLOCK, StageClock

DECODE_CHOICES = WORKER_DECODES
# Decoded pixels per decode_jpeg call: bounds device memory whatever the batch holds (a batch of
# LAION's largest allowed images would otherwise need tens of GB).
MAX_BATCH_PIXELS = 256 * 1024 * 1024

Outcome = DecodedImage | ImageRejected


def uses_batch_decoder(choice: str, device: torch.device | str) -> bool:
    """Whether a worker whose models run on `device` decodes with BatchDecoder: gpu yes, auto only on CUDA.

    gpu on a CPU device runs torchvision's CPU decoder: slower than the cpu path, but the same code
    as on CUDA, which is what the tests use it for (the CLI refuses it).
    """
    if choice not in DECODE_CHOICES:
        raise ValueError(f"decode must be one of {DECODE_CHOICES}, not {choice!r}")
    return choice == "gpu" or (choice == "auto" and torch.device(device).type == "cuda")


class BatchDecoder:
    """Decodes a list of bodies together; one outcome per body, in order (never raises per image)."""

    def __init__(self, config: ImageConfig, device: torch.device | str, max_batch_pixels: int = MAX_BATCH_PIXELS):
        self.config, self.device, self.max_batch_pixels = config, torch.device(device), max_batch_pixels

    def decode(self, bodies: list[bytes], clock: StageClock = NO_CLOCK) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(bodies)
        plain: list[tuple[int, Header]] = []
        for i, body in enumerate(bodies):
            try:
                with clock.stage("check"):
                    header = read_header(body, self.config)
            except ImageRejected as rejected:
                outcomes[i] = rejected
                continue
            if header.plain_jpeg:
                plain.append((i, header))
            else:
                outcomes[i] = _decode_on_cpu(body, self.config, clock)
        for chunk in self._chunks(plain):
            with clock.stage("decode"):
                images = self._decode_and_resize([bodies[i] for i, _ in chunk], [header for _, header in chunk])
            for (i, header), image in zip(chunk, images):
                # None: the batch decoder refused this stream; the CPU path decodes it or names the failure.
                if image is None:
                    outcomes[i] = _decode_on_cpu(bodies[i], self.config, clock)
                else:
                    with clock.stage("hash"):
                        outcomes[i] = finish(bodies[i], header, image, self.config)
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]

    def _chunks(self, plain: list[tuple[int, Header]]) -> list[list[tuple[int, Header]]]:
        """Consecutive groups of at most max_batch_pixels decoded pixels (at least one image each)."""
        chunks: list[list[tuple[int, Header]]] = []
        pixels = 0
        for item in plain:
            size = item[1].width * item[1].height
            if not chunks or pixels + size > self.max_batch_pixels:
                chunks.append([])
                pixels = 0
            chunks[-1].append(item)
            pixels += size
        return chunks

    def _decode_and_resize(self, bodies: list[bytes], headers: list[Header]) -> list[np.ndarray | None]:
        decoded = self._decode_jpegs(bodies)
        resized = [None if pixels is None else self._resize(pixels, header) for pixels, header in zip(decoded, headers)]
        return _to_host([r for r in resized if r is not None], resized)

    def _decode_jpegs(self, bodies: list[bytes]) -> list[torch.Tensor | None]:
        """CHW uint8 RGB tensors on the device; one call for the batch, one per image if that fails."""
        data = [torch.frombuffer(bytearray(body), dtype=torch.uint8) for body in bodies]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to TorchCodec
            try:
                return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:  # one bad stream fails the whole call: find which, one by one
                return [self._decode_one(tensor) for tensor in data]

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return None

    def _resize(self, pixels: torch.Tensor, header: Header) -> torch.Tensor | None:
        """img2dataset's modes on the device, with the CPU path's geometry; None if the decode disagrees with the header."""
        config = self.config
        if pixels.shape[1:] != (header.height, header.width):
            return None  # e.g. a JPEG whose frame size the header did not tell right: the CPU path decides
        if config.size is None or config.resize_mode == "no":
            return pixels
        size, mode = config.size, config.resize_mode
        width, height = scaled_size((header.width, header.height), size, mode)
        if (width, height) != (header.width, header.height):
            shrinking = width < header.width
            # Area averaging when shrinking, bicubic when enlarging.
            scaled = F.interpolate(pixels[None].float(), size=(height, width), mode="area" if shrinking else "bicubic")
            pixels = scaled[0].round_().clamp_(0, 255).to(torch.uint8)
        left, top = border_offsets((width, height), size, mode)
        if mode == "border" and (width, height) != (size, size):
            canvas = torch.full((3, size, size), 255, dtype=torch.uint8, device=pixels.device)
            canvas[:, top : top + height, left : left + width] = pixels
            return canvas
        if mode == "center_crop":
            return pixels[:, top : top + size, left : left + size]
        return pixels


def _to_host(tensors: list[torch.Tensor], slots: list[torch.Tensor | None]) -> list[np.ndarray | None]:
    """Bring the resized images to host memory in one transfer, as (height, width, 3) arrays in `slots` order."""
    if not tensors:
        return [None] * len(slots)
    host = torch.cat([t.permute(1, 2, 0).reshape(-1) for t in tensors]).cpu().numpy()
    images: list[np.ndarray | None] = []
    offset = 0
    for tensor in slots:
        if tensor is None:
            images.append(None)
            continue
        _, height, width = tensor.shape
        count = height * width * 3
        images.append(host[offset : offset + count].reshape(height, width, 3))
        offset += count
    return images


def _decode_on_cpu(body: bytes, config: ImageConfig, clock: StageClock = NO_CLOCK) -> Outcome:
    try:
        return decode(body, config, clock)
    except ImageRejected as rejected:
        return rejected
