"""Query embeddings with the release's own CLIP, so queries land in the space the release was built in.

The release manifest records model ids as the worker wrote them ("altlake-tiny@demo-<digest>",
"ViT-B-32@laion2b_s34b_b79k", "name@sha256:<digest>"). They map back to a gpu_workers ModelSpec;
after loading, the loaded model's id must equal the recorded one, otherwise queries would be
compared in a different embedding space and every result would be silently wrong.

Loading is the only heavy step (torch, open_clip), so it happens once, at service start.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from explore.errors import QueryError

MULTILINGUAL_LANGUAGE = "mul"  # ISO 639-2 "multiple languages": any non-"en" code picks the multilingual tower


@dataclass(frozen=True)
class ModelOverrides:
    """Weights the manifest cannot point at by itself (checkpoints recorded only by digest)."""

    clip_checkpoint: str | None = None
    multilingual_checkpoint: str | None = None
    device: str = "cpu"


def model_ids(manifest: dict | None) -> tuple[str | None, list[str]]:
    """(CLIP id, other text-model ids) from a release manifest or a worker summary; (None, []) if absent."""
    models = (manifest or {}).get("models") or {}
    clip = models.get("clip_model", models.get("clip"))
    texts = models.get("text_model", models.get("text")) or []
    clips = [clip] if isinstance(clip, str) else list(clip or [])
    texts = [texts] if isinstance(texts, str) else list(texts)
    if len(clips) > 1:
        raise ValueError(f"the release mixes CLIP models {clips}: its embeddings are not in one space")
    clip_id = clips[0] if clips else None
    return clip_id, [t for t in texts if t and t != clip_id]


def spec_for(clip_id: str, multilingual_ids: list[str], overrides: ModelOverrides):
    """The gpu_workers ModelSpec that reproduces the recorded models (no heads: queries need none)."""
    from gpu_workers.models import DEMO, ModelSpec

    name, _, tag = clip_id.partition("@")
    pretrained = checkpoint = None
    if overrides.clip_checkpoint:
        checkpoint = overrides.clip_checkpoint
    elif tag.startswith("demo-"):
        pretrained = DEMO
    elif tag.startswith("sha256:"):
        raise ValueError(f"{clip_id} was loaded from a checkpoint file; pass its path with --clip-checkpoint")
    elif tag in ("", "random-init"):
        raise ValueError(f"{clip_id} has no reproducible weights, so its embedding space cannot be queried")
    else:
        pretrained = tag
    multilingual = None
    if multilingual_ids:
        if overrides.multilingual_checkpoint:
            multilingual = overrides.multilingual_checkpoint
        elif all("@demo-" in m for m in multilingual_ids):
            multilingual = DEMO
        else:
            raise ValueError(f"text model {multilingual_ids} needs its file: pass --multilingual-checkpoint")
    return ModelSpec(
        clip_model=name,
        pretrained=pretrained,
        checkpoint=checkpoint,
        multilingual_text_model=multilingual,
        nsfw_head=None,  # a query needs the CLIP alone
        watermark_head=None,
        aesthetic_head=None,
        device=overrides.device,
    )


class QueryEncoder:
    """Text and decoded images to one L2-normalised float32 query vector."""

    def __init__(self, models):
        self.models = models
        self.dim: int = models.embed_dim
        self.has_multilingual = models.multilingual_text_id is not None
        self._lock = threading.Lock()  # one forward pass at a time: the CPUs are shared with faiss

    @classmethod
    def for_manifest(cls, manifest: dict | None, overrides: ModelOverrides) -> "QueryEncoder | None":
        """The encoder of the release's recorded CLIP, or None when the release records no model."""
        clip_id, multilingual_ids = model_ids(manifest)
        if clip_id is None:
            return None
        from gpu_workers.models import load_models

        models = load_models(spec_for(clip_id, multilingual_ids, overrides))
        if models.clip_id != clip_id:
            raise ValueError(f"the release was embedded with {clip_id}, but the given weights load as {models.clip_id}")
        return cls(models)

    def embed_text(self, text: str, multilingual: bool) -> np.ndarray:
        if multilingual and not self.has_multilingual:
            raise QueryError(400, "use_mclip: this release has no multilingual text model; query in English or set use_mclip=false")
        language = MULTILINGUAL_LANGUAGE if multilingual else "en"
        with self._lock:
            return self.models.embed_texts([text], [language])[0]

    def embed_image(self, image) -> np.ndarray:
        """A decoded PIL image (see explore.search.load_image)."""
        with self._lock:
            return self.models.embed_images(self.models.preprocess([image]))[0]
