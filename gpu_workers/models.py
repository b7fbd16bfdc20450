"""The scoring worker's models: CLIP through open_clip, LAION's NSFW, watermark and aesthetic heads.

One loading path for every CLIP: an open_clip model name (a built-in like "ViT-B-32" or the
project's own "altlake-tiny", registered with open_clip from demo_models/altlake-tiny.json) plus
weights from exactly one place: an open_clip pretrained tag found in a LOCAL cache, a checkpoint
file (local path or s3://), or none (random init). Nothing is ever downloaded from a model hub:
a tag that is not cached is an error that says where to put the file.

The heads reproduce LAION's published architectures so their released weights load unchanged:
- NSFW: LAION-AI/CLIP-based-NSFW-Detector's autokeras MLP over the CLIP image embedding
  (Normalization -> Dense+ReLU ... -> Dense(1)+sigmoid), in torch with the key names of the
  widely used converted state dicts (norm.mean/variance, linear_1..linear_n).
- Watermark: LAION-AI/LAION-5B-WatermarkDetection's timm efficientnet_b3a whose classifier is
  Linear(in, 625) ReLU Dropout(0.3) Linear(625, 256) ReLU Linear(256, 2); softmax column 0 is
  the watermark probability.
- Aesthetic (LAION-Aesthetics' rating, 1-10 scale) over the L2-normalised CLIP image embedding:
  LAION-AI/aesthetic-predictor's nn.Linear(dim, 1) (keys weight, bias), or
  christophschuhmann/improved-aesthetic-predictor's MLP (keys layers.N.*: Linear 1024, Dropout
  0.2, Linear 128, Dropout 0.2, Linear 64, Dropout 0.1, Linear 16, Linear 1; its reluMSE files
  add a ReLU after each hidden Linear, which shifts the indices). The keys tell which it is.

"demo" selects the project's own small models trained on generated data (see
demo_models/MODEL_CARD.md); the demo NSFW head detects a synthetic marker, NOT unsafe content,
and the demo aesthetic head rates a synthetic contrast, NOT aesthetics.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from altlake import storage
from altlake.config import Settings
from altlake.names import DEMO_MODEL

DEMO_DIR = Path(__file__).resolve().parent / "demo_models"
DEMO = DEMO_MODEL  # the model name that selects the demo models (altlake.names)
DEMO_CLIP_MODEL = "altlake-tiny"

# The committed demo checkpoints (fp16 state dicts with their metadata; see MODEL_CARD.md).
DEMO_FILES = {
    "clip": DEMO_DIR / "altlake_tiny_clip.pt",
    "multilingual": DEMO_DIR / "altlake_tiny_multilingual.pt",
    "nsfw": DEMO_DIR / "nsfw_proxy_head.pt",
    "watermark": DEMO_DIR / "watermark_head.pt",
    "aesthetic": DEMO_DIR / "aesthetic_head.pt",
}
# altlake-tiny keeps the standard open_clip SimpleTokenizer but with a short merge list (a small
# vocabulary keeps the committed embedding table small); other models use their own tokenizer.
_TOKENIZER_KWARGS = {DEMO_CLIP_MODEL: {"bpe_path": str(DEMO_DIR / "altlake_tiny_bpe.txt.gz")}}

# LAION's watermark detector: backbone, input size and the normalisation of its training.
# (LAION named it efficientnet_b3a; timm 1.x folds that alias into efficientnet_b3, same layers.)
LAION_WATERMARK_BACKBONE = "efficientnet_b3"
LAION_WATERMARK_IMAGE_SIZE = 256
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Register the demo architecture once, so `open_clip.create_model("altlake-tiny")` works like any built-in.
if DEMO_CLIP_MODEL not in open_clip.list_models():
    open_clip.add_model_config(DEMO_DIR / f"{DEMO_CLIP_MODEL}.json")


@dataclass(frozen=True)
class ModelSpec:
    """Which models a scoring run uses; every field maps to one worker CLI option."""

    clip_model: str = DEMO_CLIP_MODEL  # any open_clip model name, e.g. "ViT-B-32"
    # open_clip pretrained tag resolved from the LOCAL cache only ("demo" for altlake-tiny's
    # committed weights, the default for altlake-tiny when neither this nor checkpoint is given).
    pretrained: str | None = None
    checkpoint: str | None = None  # local path or s3://bucket/key of an open_clip state dict
    # "demo", a local path or s3:// URL of a text-tower file, or a local M-CLIP directory (gpu_workers.multilingual).
    multilingual_text_model: str | None = None
    nsfw_head: str | None = DEMO  # path / s3 URL of NSFW head weights, "demo" for ours, None to skip
    watermark_head: str | None = DEMO
    aesthetic_head: str | None = DEMO  # path / s3 URL of a LAION-Aesthetics predictor, "demo", None to skip
    device: str = "cpu"  # cpu | cuda
    # Where pretrained tags are looked up and s3:// files cached (default: <Settings.cache_dir>/models).
    cache_dir: str | None = None
    # S3-compatible endpoint for s3:// weights (default: Settings.s3_endpoint, then altlake.storage's).
    s3_endpoint: str | None = None
    # The model profile (altlake.profiles) these fields come from, recorded in every row it scores;
    # None when the models were chosen flag by flag.
    profile: str | None = None


def unit_rows(x: torch.Tensor) -> np.ndarray:
    """fp32 L2-normalised rows (normalised after any autocast, so fp16 rounding does not leak)."""
    return nn.functional.normalize(x.float(), dim=-1).cpu().numpy().astype(np.float32)


def tokenizer_for(model_name: str, context_length: int | None = None):
    """open_clip's tokenizer for `model_name` (altlake-tiny: SimpleTokenizer on its short merge list)."""
    return open_clip.get_tokenizer(model_name, context_length=context_length, **_TOKENIZER_KWARGS.get(model_name, {}))


def similarity(img: np.ndarray, txt: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) embedding arrays (normalises defensively)."""
    img = np.asarray(img, dtype=np.float32)
    txt = np.asarray(txt, dtype=np.float32)
    if img.shape != txt.shape:
        raise ValueError(f"embedding shapes differ: images {img.shape}, texts {txt.shape}")
    norms = np.linalg.norm(img, axis=1) * np.linalg.norm(txt, axis=1)
    return (np.einsum("ij,ij->i", img, txt) / np.maximum(norms, 1e-12)).astype(np.float32)


# --- the heads (LAION architectures) ---------------------------------------------------------------


class Normalization(nn.Module):
    """Keras' Normalization layer as LAION's autokeras model has it: (x - mean) / max(sqrt(variance), 1e-7)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("variance", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.variance.sqrt().clamp_min(1e-7)  # Keras' epsilon: a constant input dim stays finite


# LAION's released stacks: ViT-L/14 (clip_autokeras_binary_nsfw) and ViT-B/32 (clip_autokeras_nsfw_b32).
NSFW_HIDDEN_L14 = (64, 512, 256)
NSFW_HIDDEN_B32 = (32, 32)


class NsfwHead(nn.Module):
    """LAION's CLIP-based NSFW detector: Normalization, ReLU Dense layers, a sigmoid unit."""

    def __init__(self, embed_dim: int, hidden: tuple[int, ...] = NSFW_HIDDEN_L14, dropout: float = 0.0):
        super().__init__()
        self.norm = Normalization(embed_dim)
        sizes = (embed_dim, *hidden, 1)
        self.n_linear = len(sizes) - 1
        for i in range(self.n_linear):
            setattr(self, f"linear_{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)  # only active in training; LAION's b32 stack has one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        for i in range(1, self.n_linear):
            x = self.dropout(self.act(getattr(self, f"linear_{i}")(x)))
        return torch.sigmoid(getattr(self, f"linear_{self.n_linear}")(x)).squeeze(-1)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> "NsfwHead":
        """Rebuild the stack from the layer shapes, so both LAION variants and ours load."""
        weights = sorted(
            (int(k.split("_")[1].split(".")[0]), v) for k, v in state_dict.items() if k.startswith("linear_") and k.endswith(".weight")
        )
        if not weights:
            raise ValueError("not an NSFW head state dict: no linear_N.weight keys")
        embed_dim = weights[0][1].shape[1]
        head = cls(embed_dim, hidden=tuple(w.shape[0] for _, w in weights[:-1]))
        head.load_state_dict({k: v.float() for k, v in state_dict.items()})
        return head


def watermark_classifier(in_features: int) -> nn.Sequential:
    """LAION-5B-WatermarkDetection's replacement classifier; output column 0 = watermark."""
    return nn.Sequential(
        nn.Linear(in_features, 625),
        nn.ReLU(),
        nn.Dropout(p=0.3),
        nn.Linear(625, 256),
        nn.ReLU(),
        nn.Linear(256, 2),
    )


def build_watermark_model(backbone: str = LAION_WATERMARK_BACKBONE) -> nn.Module:
    """A timm backbone (no pretrained weights) with LAION's watermark classifier in place of its own."""
    model = timm.create_model(backbone, pretrained=False, num_classes=2)
    model.reset_classifier(0)
    if not hasattr(model, "classifier"):
        raise ValueError(f"timm model {backbone!r} has no `classifier` attribute; use an EfficientNet/MobileNet-family backbone")
    # MobileNetV3-style backbones put a conv head between the features and the classifier.
    model.classifier = watermark_classifier(getattr(model, "head_hidden_size", None) or model.num_features)
    return model


def watermark_transform(image_size: int) -> T.Compose:
    """LAION's preprocessing: square resize, ImageNet normalisation."""
    return T.Compose(
        [
            T.Lambda(lambda im: im.convert("RGB")),
            T.Resize((image_size, image_size)),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


# improved-aesthetic-predictor's MLP: (width, dropout after it) of each hidden Linear.
AESTHETIC_MLP_HIDDEN = ((1024, 0.2), (128, 0.2), (64, 0.1), (16, 0.0))
# Where its Linears sit in `layers`: linearMSE files have no activations, reluMSE ones a ReLU after each hidden Linear.
_AESTHETIC_MLP_LINEARS = {(0, 2, 4, 6, 7): False, (0, 3, 6, 9, 11): True}


class AestheticMlp(nn.Module):
    """improved-aesthetic-predictor's MLP, its nn.Sequential named `layers` as in the released state dicts."""

    def __init__(self, embed_dim: int, relu: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        width = embed_dim
        for size, dropout in AESTHETIC_MLP_HIDDEN:
            layers.append(nn.Linear(width, size))
            if relu:
                layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def aesthetic_head(state_dict: dict[str, torch.Tensor]) -> tuple[nn.Module, str]:
    """The LAION-Aesthetics predictor a state dict was saved from (its keys tell which), weights
    loaded, and its layout's name; the module maps (N, dim) embeddings to (N, 1) ratings."""
    if set(state_dict) == {"weight", "bias"}:
        head, layout = nn.Linear(state_dict["weight"].shape[1], 1), "linear"
    else:
        linears = tuple(sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("layers.") and k.endswith(".weight")}))
        if linears not in _AESTHETIC_MLP_LINEARS:
            raise ValueError(
                "not a LAION-Aesthetics predictor state dict: expected the keys weight and bias (LAION-AI/aesthetic-predictor) "
                f"or layers.N.weight/bias with N = 0,2,4,6,7 or 0,3,6,9,11 (improved-aesthetic-predictor), got {sorted(state_dict)[:8]}"
            )
        relu = _AESTHETIC_MLP_LINEARS[linears]
        head, layout = AestheticMlp(state_dict["layers.0.weight"].shape[1], relu), "mlp-relu" if relu else "mlp"
    head.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return head, layout


# Transform steps that only make an image RGB (decoded images already are): open_clip's, ours (Lambda).
_RGB_STEPS = ("MaybeConvertMode", "_convert_to_rgb")


@dataclass(frozen=True)
class DeviceTransform:
    """An eval transform (Resize [+ CenterCrop] + Normalize) applied to a whole uint8 batch on the
    GPU: the per-image PIL resize and normalisation would otherwise cost the CPU milliseconds per
    image. Interpolation is torch's antialiased kernel of the same kind; values differ from PIL's
    by its rounding of resized pixels to uint8 (a third of a grey level on average)."""

    size: tuple[int, int] | int  # (h, w): resize to exactly that; int: the shorter side, as T.Resize(int)
    crop: int | None
    mode: str  # "bicubic" | "bilinear"
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, transform: T.Compose) -> DeviceTransform | None:
        """The same steps as `transform`, or None when it holds a step this cannot reproduce."""
        resize = crop = normalize = None
        for step in transform.transforms:
            if isinstance(step, T.Resize):
                resize = step
            elif isinstance(step, T.CenterCrop):
                crop = step
            elif isinstance(step, T.Normalize):
                normalize = step
            elif not (isinstance(step, (T.ToTensor, T.Lambda)) or inspect.isfunction(step) or type(step).__name__ in _RGB_STEPS):
                return None  # random crops, padding, ...
        modes = {T.InterpolationMode.BICUBIC: "bicubic", T.InterpolationMode.BILINEAR: "bilinear"}
        if resize is None or normalize is None or resize.interpolation not in modes or resize.max_size is not None:
            return None
        size = resize.size
        target = size if isinstance(size, int) else int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1]))
        crop_side = None
        if crop is not None:
            if crop.size[0] != crop.size[-1]:
                return None
            crop_side = int(crop.size[0])
        return cls(target, crop_side, modes[resize.interpolation], tuple(normalize.mean), tuple(normalize.std))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 on the device -> (B, 3, h, w) float, normalised."""
        x = batch.permute(0, 3, 1, 2).float().div_(255)
        h, w = x.shape[-2:]
        if isinstance(self.size, int):
            scale = self.size / min(h, w)
            target = (self.size, round(w * scale)) if h <= w else (round(h * scale), self.size)
        else:
            target = self.size
        if target != (h, w):
            x = F.interpolate(x, size=target, mode=self.mode, antialias=True, align_corners=False).clamp_(0, 1)
        if self.crop is not None:
            top, left = (x.shape[-2] - self.crop) // 2, (x.shape[-1] - self.crop) // 2
            x = x[..., top : top + self.crop, left : left + self.crop]
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


class HostTransform:
    """An eval transform run per image on the CPU with the same output bits: its PIL steps as they
    are, then ToTensor + Normalize as three float32 numpy operations on the pixels (the same IEEE
    divisions and subtraction torchvision performs) instead of torchvision's tensor permute, copy,
    divide, subtract and divide: 0.2 ms instead of 0.45 per 224 px image. Any other layout of steps runs
    the transform itself."""

    def __init__(self, transform):
        steps = list(getattr(transform, "transforms", []))
        self._transform = transform
        # open_clip's MaybeToTensor is a ToTensor that passes tensors through; these steps get PIL images
        self._fast = len(steps) >= 2 and isinstance(steps[-2], T.ToTensor) and isinstance(steps[-1], T.Normalize)
        if self._fast:
            self._pil_steps, (self._to_tensor, self._normalize) = steps[:-2], steps[-2:]
            self._mean = np.asarray(self._normalize.mean, np.float32).reshape(-1, 1, 1)
            self._std = np.asarray(self._normalize.std, np.float32).reshape(-1, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not self._fast:
            return self._transform(image)
        for step in self._pil_steps:
            image = step(image)
        if image.mode != "RGB":  # ToTensor keeps other modes' channels; leave those to torchvision
            return self._normalize(self._to_tensor(image))
        x = np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1))  # planes: long inner loops
        x /= np.float32(255)
        x -= self._mean
        x /= self._std
        return torch.from_numpy(x)


# --- loaded models ----------------------------------------------------------------------------------


class Models:
    """Everything a scoring run needs, loaded once per worker process."""

    def __init__(
        self,
        clip: nn.Module,
        transform,
        tokenizer,
        clip_id: str,
        image_size: int,
        embed_dim: int,
        device: torch.device,
        thresholds: dict[str, float],
        multilingual: tuple[nn.Module, object, str] | None = None,
        nsfw: tuple[NsfwHead, str] | None = None,
        watermark: tuple[nn.Module, T.Compose, str] | None = None,
        aesthetic: tuple[nn.Module, str] | None = None,
    ):
        self._clip, self._transform, self._tokenizer = clip, HostTransform(transform), tokenizer
        self._clip_on_device = DeviceTransform.of(transform)
        self._watermark_on_device = DeviceTransform.of(watermark[1]) if watermark else None
        self._multilingual = multilingual
        self._nsfw = nsfw[0] if nsfw else None
        self._watermark = (watermark[0], HostTransform(watermark[1])) if watermark else None
        self._aesthetic = aesthetic[0] if aesthetic else None
        self.device = device
        self.image_size: int = image_size
        self.embed_dim: int = embed_dim
        self.clip_id: str = clip_id
        self.text_id: str = clip_id  # the CLIP text tower (English and, without a multilingual model, all text)
        self.multilingual_text_id: str | None = multilingual[2] if multilingual else None
        self.nsfw_id: str | None = nsfw[1] if nsfw else None
        self.watermark_id: str | None = watermark[2] if watermark else None
        self.aesthetic_id: str | None = aesthetic[1] if aesthetic else None
        # Similarity thresholds calibrated for these weights ({"en": .., "other": ..}); empty when unknown.
        self.thresholds: dict[str, float] = thresholds

    # -- helpers shared by every call --
    def _autocast(self):
        if self.device.type != "cuda":
            return nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(self.device, non_blocking=True)

    def _pin(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.pin_memory() if self.device.type == "cuda" else batch

    @property
    def preprocesses_on_device(self) -> bool:
        """Whether embed_images / pwatermark take raw uint8 (B, H, W, 3) batches (CUDA, known transforms)."""
        return (
            self.device.type == "cuda"
            and self._clip_on_device is not None
            and (self._watermark is None or self._watermark_on_device is not None)
        )

    # -- the API the worker calls --
    def upload(self, batch: torch.Tensor) -> torch.Tensor:
        """One copy to the device (from pinned memory on CUDA) for everything that reads the batch."""
        return self._to_device(self._pin(batch))

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """A CLIP input batch built with open_clip's own eval transform (pinned on CUDA)."""
        if not images:
            return torch.empty(0, 3, self.image_size, self.image_size)
        return self._pin(torch.stack([self._transform(image) for image in images]))

    def embed_images(self, batch: torch.Tensor) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        with torch.inference_mode(), self._autocast():
            batch = self._to_device(batch)
            if batch.dtype == torch.uint8:  # raw pixels: CLIP's own preprocessing, batched on the device
                batch = self._device_step(self._clip_on_device, batch)
            return unit_rows(self._clip.encode_image(batch))

    @staticmethod
    def _device_step(step: DeviceTransform | None, batch: torch.Tensor) -> torch.Tensor:
        if step is None:
            raise ValueError("uint8 batches need a transform DeviceTransform can reproduce")
        with torch.autocast(batch.device.type, enabled=False):  # resize and normalise in float32, as PIL does
            return step(batch)

    def text_model_for(self, language: str) -> str:
        """The id of the text encoder `embed_texts` uses for `language` (recorded per row)."""
        return self.multilingual_text_id if self._uses_multilingual(language) else self.text_id

    def _uses_multilingual(self, language: str) -> bool:
        return self._multilingual is not None and language != "en"

    def embed_texts(self, texts: list[str], languages: list[str]) -> np.ndarray:
        """English through CLIP's text tower, other languages through the multilingual encoder (if any)."""
        if len(texts) != len(languages):
            raise ValueError(f"{len(texts)} texts but {len(languages)} languages")
        out = np.zeros((len(texts), self.embed_dim), np.float32)
        groups: dict[bool, list[int]] = {}
        for i, language in enumerate(languages):
            groups.setdefault(self._uses_multilingual(language), []).append(i)
        for multilingual, rows in groups.items():
            if multilingual:
                tower, tokenizer, _ = self._multilingual
                encode = tower
            else:
                tokenizer, encode = self._tokenizer, self._clip.encode_text
            tokens = self._to_device(self._pin(tokenizer([texts[i] for i in rows])))
            with torch.inference_mode(), self._autocast():
                out[rows] = unit_rows(encode(tokens))
        return out

    def punsafe(self, image_embeddings: np.ndarray) -> np.ndarray | None:
        """P(unsafe) per image from LAION's NSFW head; None when the run has no NSFW head."""
        if self._nsfw is None:
            return None
        if len(image_embeddings) == 0:
            return np.zeros(0, np.float32)
        x = self._to_device(torch.from_numpy(np.ascontiguousarray(image_embeddings, dtype=np.float32)))
        with torch.inference_mode():
            return self._nsfw(x).float().cpu().numpy()

    def pwatermark(self, images: list[Image.Image] | torch.Tensor) -> np.ndarray | None:
        """P(watermark) per image from LAION's watermark classifier; None when the run has none.
        `images`: PIL images, or the uint8 batch CLIP read (preprocesses_on_device)."""
        if self._watermark is None:
            return None
        if len(images) == 0:
            return np.zeros(0, np.float32)
        model, transform = self._watermark
        with torch.inference_mode():
            if isinstance(images, torch.Tensor):
                batch = self._device_step(self._watermark_on_device, self._to_device(images))
            else:
                batch = self._to_device(self._pin(torch.stack([transform(image) for image in images])))
            with self._autocast():
                logits = model(batch)
        return torch.softmax(logits.float(), dim=1)[:, 0].cpu().numpy()

    def aesthetic(self, image_embeddings: np.ndarray) -> np.ndarray | None:
        """LAION-Aesthetics' predicted rating (1-10 scale) per image from its L2-normalised CLIP image
        embedding (as embed_images returns it); None when the run has no aesthetic head."""
        if self._aesthetic is None:
            return None
        if len(image_embeddings) == 0:
            return np.zeros(0, np.float32)
        x = self._to_device(torch.from_numpy(np.ascontiguousarray(image_embeddings, dtype=np.float32)))
        with torch.inference_mode():
            return self._aesthetic(x).squeeze(-1).float().cpu().numpy()


# --- loading ----------------------------------------------------------------------------------------


def load_models(spec: ModelSpec) -> Models:
    """Load CLIP (+ optional multilingual text tower and heads) as `spec` says; never downloads."""
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device; use --device cpu")
    settings = Settings.from_env()
    cache_dir = Path(spec.cache_dir or Path(settings.cache_dir) / "models")
    fetch = _Fetcher(cache_dir, spec.s3_endpoint or settings.s3_endpoint)

    clip, transform, tokenizer, clip_id, thresholds = _load_clip(spec, cache_dir, fetch, device)
    cfg = open_clip.get_model_config(spec.clip_model)
    size = cfg["vision_cfg"]["image_size"]
    image_size = int(size[0] if isinstance(size, (list, tuple)) else size)
    embed_dim = int(cfg["embed_dim"])
    multilingual = None
    if spec.multilingual_text_model:
        tower, tower_tokenizer, tower_id, threshold = _load_text_tower(spec.multilingual_text_model, fetch, device, embed_dim)
        multilingual = (tower, tower_tokenizer, tower_id)
        if threshold is not None:
            thresholds["other"] = threshold
    nsfw = _load_nsfw(spec.nsfw_head, fetch, device, embed_dim) if spec.nsfw_head else None
    watermark = _load_watermark(spec.watermark_head, fetch, device) if spec.watermark_head else None
    aesthetic = _load_aesthetic(spec.aesthetic_head, fetch, device, embed_dim) if spec.aesthetic_head else None
    return Models(clip, transform, tokenizer, clip_id, image_size, embed_dim, device, thresholds, multilingual, nsfw, watermark, aesthetic)


def _load_clip(spec: ModelSpec, cache_dir: Path, fetch: "_Fetcher", device: torch.device):
    if spec.pretrained and spec.checkpoint:
        raise ValueError("give either a pretrained tag or a checkpoint, not both")
    name = spec.clip_model
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}; known: {', '.join(open_clip.list_models())}")
    pretrained = spec.pretrained
    if name == DEMO_CLIP_MODEL and not pretrained and not spec.checkpoint:
        pretrained = DEMO
    kwargs: dict = {}
    metadata: dict = {}
    if pretrained == DEMO:
        if name != DEMO_CLIP_MODEL:
            raise ValueError(f"pretrained='demo' exists only for {DEMO_CLIP_MODEL}, not {name}")
        path = _demo_file("clip")
        clip_id = _weights_id(name, DEMO, path)
    elif pretrained:
        path, kwargs = _cached_pretrained(name, pretrained, cache_dir)
        clip_id = f"{name}@{pretrained}:sha256:{_digest(path)}"  # the tag names the weights, the digest pins the file
    elif spec.checkpoint:
        path = fetch(spec.checkpoint)
        clip_id = _weights_id(name, spec.checkpoint, path)
    else:
        path, clip_id = None, f"{name}@random-init"
    if path is not None and (pretrained == DEMO or not pretrained):  # released weights (maybe safetensors) carry no metadata of ours
        metadata = _metadata(path)
    model, _, transform = open_clip.create_model_and_transforms(name, pretrained=str(path) if path else None, device=device, **kwargs)
    model.eval()
    tokenizer = tokenizer_for(name)
    # Without a multilingual encoder every language goes through this text tower, so one threshold serves all.
    thresholds = {"en": float(metadata["threshold"]), "other": float(metadata["threshold"])} if "threshold" in metadata else {}
    return model, transform, tokenizer, clip_id, thresholds


def _cached_pretrained(name: str, tag: str, cache_dir: Path) -> tuple[Path, dict]:
    """Resolve an open_clip pretrained tag to a file already in the local cache, or explain where to put it."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(f"{name} has no pretrained tag {tag!r}; known tags: {known or 'none'}")
    candidates: list[Path] = []
    where = ""
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        # open_clip's convention: "org/repo/file" names a file, "org/repo/" means its default weights file.
        repo, filename = os.path.split(cfg["hf_hub"])
        filenames = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for candidate in filenames:
            found = try_to_load_from_cache(repo, candidate, cache_dir=str(cache_dir))
            if isinstance(found, str):
                candidates.append(Path(found))
        where = f"the Hugging Face cache layout under {cache_dir} (repo {repo}, file {' or '.join(filenames)}; e.g. `huggingface-cli download {repo} {filenames[0]} --cache-dir {cache_dir}` on a machine with network access)"
    if cfg.get("url"):
        local = cache_dir / os.path.basename(cfg["url"])
        if local.is_file():
            candidates.append(local)
        where = (where + " or " if where else "") + f"{local} (from {cfg['url']})"
    if not candidates:
        raise FileNotFoundError(
            f"pretrained weights {name}/{tag} are not in the local model cache; altlake never downloads weights. "
            f"Put them at {where}, or pass a checkpoint path instead."
        )
    kwargs = {
        "force_quick_gelu": bool(cfg.get("quick_gelu", False)),
        "image_mean": cfg.get("mean"),
        "image_std": cfg.get("std"),
        "image_interpolation": cfg.get("interpolation"),
        "image_resize_mode": cfg.get("resize_mode"),
    }
    return candidates[0], kwargs


def _load_text_tower(source: str, fetch: "_Fetcher", device: torch.device, clip_dim: int):
    """A multilingual text encoder: a local M-CLIP directory, or a file holding an open_clip
    TextTransformer trained into CLIP's embedding space."""
    if source != DEMO and not storage.is_object_store(source) and Path(source).is_dir():
        from gpu_workers.multilingual import load_mclip  # imports transformers: only runs that use M-CLIP pay for it

        tower, tokenizer, name, weights = load_mclip(source, device, clip_dim)
        return tower, tokenizer, _weights_id(name, source, weights), None
    path = _demo_file("multilingual") if source == DEMO else fetch(source)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "text_cfg" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"{source} is not a text-tower file (expected keys text_cfg, embed_dim, tokenizer, state_dict)")
    if int(checkpoint["embed_dim"]) != clip_dim:
        raise ValueError(f"multilingual text model {source} embeds into {checkpoint['embed_dim']} dims, the CLIP into {clip_dim}")
    cfg = dict(checkpoint["text_cfg"])
    tower = open_clip.transformer.TextTransformer(output_dim=clip_dim, **cfg)
    tower.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
    tower.to(device).eval()
    tokenizer = tokenizer_for(checkpoint["tokenizer"], context_length=cfg["context_length"])
    threshold = checkpoint.get("metadata", {}).get("threshold")
    return tower, tokenizer, _weights_id(checkpoint.get("name", "text-tower"), source, path), threshold


def _load_nsfw(source: str, fetch: "_Fetcher", device: torch.device, clip_dim: int) -> tuple[NsfwHead, str]:
    path = _demo_file("nsfw") if source == DEMO else fetch(source)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
    head = NsfwHead.from_state_dict(state_dict)
    if head.norm.mean.shape[0] != clip_dim:
        raise ValueError(f"NSFW head {source} expects {head.norm.mean.shape[0]}-dim CLIP embeddings, this CLIP gives {clip_dim}")
    # The demo head's name says what it detects: a synthetic marker, not NSFW content.
    name = "laion-nsfw-mlp" if source != DEMO else "laion-nsfw-mlp-unsafe-proxy"
    return head.to(device).eval(), _weights_id(name, source, path)


def _load_watermark(source: str, fetch: "_Fetcher", device: torch.device) -> tuple[nn.Module, T.Compose, str]:
    """LAION's watermark model file (a bare state dict) or ours (state dict + backbone + image size)."""
    path = _demo_file("watermark") if source == DEMO else fetch(source)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in checkpoint:
        backbone, image_size, state_dict = checkpoint["backbone"], int(checkpoint["image_size"]), checkpoint["state_dict"]
    else:
        backbone, image_size, state_dict = LAION_WATERMARK_BACKBONE, LAION_WATERMARK_IMAGE_SIZE, checkpoint
    model = build_watermark_model(backbone)
    model.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return model.to(device).eval(), watermark_transform(image_size), _weights_id(f"laion-watermark-{backbone}", source, path)


def _load_aesthetic(source: str, fetch: "_Fetcher", device: torch.device, clip_dim: int) -> tuple[nn.Module, str]:
    """LAION's aesthetic predictor file (a bare state dict, linear or MLP) or ours (state dict + metadata)."""
    path = _demo_file("aesthetic") if source == DEMO else fetch(source)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
    head, layout = aesthetic_head(state_dict)
    dim = next(m for m in head.modules() if isinstance(m, nn.Linear)).in_features
    if dim != clip_dim:
        raise ValueError(f"aesthetic head {source} expects {dim}-dim CLIP image embeddings, this CLIP gives {clip_dim}")
    # The demo head's name says what it rates: a synthetic contrast, not aesthetics.
    name = f"laion-aesthetic-{layout}" + ("-contrast-proxy" if source == DEMO else "")
    return head.to(device).eval(), _weights_id(name, source, path)


# --- files -------------------------------------------------------------------------------------------


def _demo_file(kind: str) -> Path:
    path = DEMO_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(f"demo {kind} checkpoint missing at {path}; recreate it with `python -m gpu_workers.demo_models.train`")
    return path


def _metadata(path: Path) -> dict:
    """The `metadata` dict altlake stores next to a state dict (calibrated threshold, ...), if any."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return dict(checkpoint.get("metadata", {})) if isinstance(checkpoint, dict) else {}


def _weights_id(name: str, source: str, path: Path) -> str:
    """The model id recorded per row: architecture plus where the weights came from and their hash."""
    return f"{name}@{'demo-' if source == DEMO else 'sha256:'}{_digest(path)}"


def _digest(path: Path) -> str:
    """Short content hash: the model id changes whenever the weights do."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


class _Fetcher:
    """Resolves a weights location to a local file: local paths as they are, s3:// into the cache
    (altlake.storage: once per object version, atomically, so concurrent workers never read half a file)."""

    def __init__(self, cache_dir: Path, endpoint: str):
        self.cache_dir, self.options = cache_dir, storage.S3Options(endpoint=endpoint)

    def __call__(self, location: str) -> Path:
        if storage.is_object_store(location):
            return storage.fetch(location, self.cache_dir, self.options)
        path = Path(location)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {location}")
        return path
