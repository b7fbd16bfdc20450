"""Model profiles: everything one scoring run uses, under one name.

A profile fixes the CLIP (an open_clip model name plus either a pretrained tag found in the local
model cache or a checkpoint path / s3:// URI), an optional multilingual text tower, the NSFW,
watermark and aesthetic heads, and the similarity thresholds calibrated for that CLIP: a
threshold only means something for the model whose similarities it cuts. The worker loads a
profile by name (`altlake score --profile NAME`), every `scores` row records it, and a release
applies the thresholds of the profile that scored each row.

A deployment lists its profiles in one TOML file (Settings.model_profiles), one table each:

    [profiles.vit-l14]
    clip_model = "ViT-L-14"
    pretrained = "openai"
    nsfw_head = "/models/clip_autokeras_binary_nsfw.pt"
    threshold_en = 0.28
    threshold_other = 0.26

A head left out is not run (its score stays null). The built-in `demo` profile, the project's own
small models (gpu_workers/demo_models) with their calibrated thresholds, is always there.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from altlake.names import DEMO_MODEL

# Names go into command lines, form enums and manifest keys ("<profile>:en"): no spaces, no colons.
PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# LAION-5B's thresholds (for its ViT-B/32 and ViT-L/14 scores): what a release applies to rows
# scored before profiles existed, which record none.
LAION_THRESHOLD_EN = 0.28
LAION_THRESHOLD_OTHER = 0.26

# The `altlake score` flags that choose models one by one (argparse dest -> flag): a profile chooses
# them all at once, so the worker refuses them beside --profile and a deployment's worker args
# must not hold them.
MODEL_FLAGS = {
    "model": "--model",
    "checkpoint": "--checkpoint",
    "pretrained": "--pretrained",
    "text_model": "--text-model",
    "nsfw_head": "--nsfw-head",
    "no_nsfw": "--no-nsfw",
    "watermark_head": "--watermark-head",
    "no_watermark": "--no-watermark",
    "aesthetic_head": "--aesthetic-head",
    "no_aesthetic": "--no-aesthetic",
}


class ProfileError(ValueError):
    """Every problem found in a profiles file (or a profile name), one line each."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        listed = problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n  - " + "\n  - ".join(problems)
        super().__init__(f"{source}: {listed}")


@dataclass(frozen=True)
class ModelProfile:
    """One scoring run's models and the similarity thresholds that fit its CLIP."""

    name: str
    clip_model: str  # an open_clip model name, e.g. "ViT-L-14"
    pretrained: str | None = None  # an open_clip pretrained tag, resolved from the local cache only
    checkpoint: str | None = None  # or a local path / s3:// URI of an open_clip state dict
    text_model: str | None = None  # multilingual text tower for non-English captions (None: CLIP's own)
    nsfw_head: str | None = None  # "demo", a path or s3:// URI; None: not run
    watermark_head: str | None = None
    aesthetic_head: str | None = None
    threshold_en: float = LAION_THRESHOLD_EN
    threshold_other: float = LAION_THRESHOLD_OTHER


# The demo models with the thresholds calibrated on their validation scenes (the metadata of
# gpu_workers/demo_models/altlake_tiny_clip.pt and altlake_tiny_multilingual.pt; a test checks they agree).
DEMO_PROFILE = ModelProfile(
    name=DEMO_MODEL,
    clip_model="altlake-tiny",
    pretrained=DEMO_MODEL,
    text_model=DEMO_MODEL,
    nsfw_head=DEMO_MODEL,
    watermark_head=DEMO_MODEL,
    aesthetic_head=DEMO_MODEL,
    threshold_en=0.7853140234947205,
    threshold_other=0.7508697509765625,
)

_STRINGS = ("clip_model", "pretrained", "checkpoint", "text_model", "nsfw_head", "watermark_head", "aesthetic_head")
_THRESHOLDS = ("threshold_en", "threshold_other")
_REQUIRED = ("clip_model", *_THRESHOLDS)
_KEYS = tuple(f.name for f in fields(ModelProfile) if f.name != "name")


def load_profiles(path: str) -> dict[str, ModelProfile]:
    """The built-in demo profile plus every profile of the TOML file at `path` (none when empty);
    ProfileError lists every problem of the file at once."""
    profiles = {DEMO_PROFILE.name: DEMO_PROFILE}
    if not path:
        return profiles
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(path, ["the model profiles file does not exist (ALTLAKE_MODEL_PROFILES)"]) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ProfileError(path, [f"not a readable TOML file: {error}"]) from None
    problems = [f"unknown top-level key {key!r}: profiles go in [profiles.<name>] tables" for key in document if key != "profiles"]
    tables = document.get("profiles", {})
    if not isinstance(tables, dict):
        problems.append("`profiles` must be a table of [profiles.<name>] tables")
        tables = {}
    for name, table in tables.items():
        profile, found = _parse(name, table)
        problems += found
        if profile is not None:
            profiles[name] = profile
    if problems:
        raise ProfileError(path, problems)
    return profiles


def select_profile(profiles: dict[str, ModelProfile], name: str, source: str = "model profile") -> ModelProfile:
    """The profile called `name`; ProfileError naming the known ones otherwise."""
    if name not in profiles:
        raise ProfileError(source, [f"unknown model profile {name!r}; known: {', '.join(sorted(profiles))}"])
    return profiles[name]


def _parse(name: str, table: object) -> tuple[ModelProfile | None, list[str]]:
    """One [profiles.<name>] table -> (the profile or None, its problems)."""
    where = f"[profiles.{name}]"
    if not PROFILE_NAME.match(name):
        return None, [f"{where}: a profile name is letters, digits, '.', '_' or '-' (at most 64, not starting with a symbol)"]
    if name == DEMO_PROFILE.name:
        return None, [f"{where}: 'demo' is built in (the project's demo models) and cannot be redefined"]
    if not isinstance(table, dict):
        return None, [f"{where}: must be a table of keys, not {type(table).__name__}"]
    problems = [f"{where}: unknown key {key!r}; known: {', '.join(_KEYS)}" for key in table if key not in _KEYS]
    problems += [f"{where}: {key} is required" for key in _REQUIRED if key not in table]
    for key in _STRINGS:
        if key in table and (not isinstance(table[key], str) or not table[key].strip()):
            problems.append(f"{where}: {key} must be a non-empty string, not {table[key]!r}")
    for key in _THRESHOLDS:
        value = table.get(key)
        if key in table and (isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1):
            problems.append(f"{where}: {key} must be a number between -1 and 1 (a cosine similarity), not {value!r}")
    weights = [key for key in ("pretrained", "checkpoint") if key in table]
    if len(weights) != 1:
        problems.append(f"{where}: give the CLIP's weights as exactly one of pretrained (a cached open_clip tag) or checkpoint "
                        f"(a path or s3:// URI), not {' and '.join(weights) or 'neither'}")  # fmt: skip
    if problems:
        return None, problems
    values = {key: float(value) if key in _THRESHOLDS else value for key, value in table.items()}
    return ModelProfile(name=name, **values), []
