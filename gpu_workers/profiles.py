"""A model profile (altlake.profiles) as the worker's ModelSpec, checked by loading it.

Loading is the check that counts: an open_clip name that does not exist, a weights file that is
not there, a checkpoint of another architecture, a head trained on another CLIP's embedding width
all fail here with one line saying which, before the worker downloads a single image, instead of
a traceback from deep inside torch.
"""

from __future__ import annotations

import difflib
import pickle

import open_clip

from altlake.profiles import ModelProfile
from gpu_workers.models import Models, ModelSpec, load_models

# What loading raises for bad weights or a bad choice of models (torch.load of a file that is not a
# state dict: UnpicklingError / EOFError; load_state_dict of the wrong shapes: RuntimeError).
_LOAD_ERRORS = (ValueError, OSError, RuntimeError, KeyError, pickle.UnpicklingError, EOFError)


class ModelLoadError(ValueError):
    """The run's models cannot be loaded; the message is one line for the person who chose them."""


def model_spec(profile: ModelProfile, device: str = "cpu") -> ModelSpec:
    """The ModelSpec that loads exactly the profile's models (and records its name per row)."""
    return ModelSpec(
        clip_model=profile.clip_model,
        pretrained=profile.pretrained,
        checkpoint=profile.checkpoint,
        multilingual_text_model=profile.text_model,
        nsfw_head=profile.nsfw_head,
        watermark_head=profile.watermark_head,
        aesthetic_head=profile.aesthetic_head,
        device=device,
        profile=profile.name,
    )


def load_checked(spec: ModelSpec) -> Models:
    """load_models(spec), its failures turned into one ModelLoadError line naming the profile."""
    what = f"model profile {spec.profile!r}" if spec.profile else "models"
    if spec.clip_model not in open_clip.list_models():
        close = difflib.get_close_matches(spec.clip_model, open_clip.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (open_clip.list_models() lists them)"
        raise ModelLoadError(f"{what}: unknown open_clip model {spec.clip_model!r}{hint}")
    try:
        return load_models(spec)
    except _LOAD_ERRORS as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        raise ModelLoadError(f"{what}: {' '.join(lines[:2])[:400]}") from error
