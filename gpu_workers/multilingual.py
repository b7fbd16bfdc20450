"""M-CLIP's multilingual text tower (FreddeFrallan/Multilingual-CLIP), loaded from a local directory.

M-CLIP's released checkpoints (e.g. M-CLIP/XLM-Roberta-Large-Vit-L-14) are an XLM-RoBERTa whose
last hidden state is mean-pooled over the attention mask and mapped by one nn.Linear into a CLIP's
embedding space (multilingual_clip/pt_multilingual_clip.py: MultilingualCLIP.forward). Their
config.json only *names* the base model (modelBase, e.g. "xlm-roberta-large") for a hub download,
which altlake never does, so the directory must also hold that base model's own config.json, saved
as `transformer_config.json`. The directory then reads:

    config.json               M-CLIP's: model_type "M-CLIP", modelBase, transformerDimensions, numDims
    transformer_config.json   the base model's config.json (xlm-roberta-large's for the released towers)
    model.safetensors | pytorch_model.bin   keys transformer.* and LinearTransformation.weight/bias
    tokenizer.json (+ tokenizer_config.json, special_tokens_map.json)   the XLM-R tokenizer transformers saves

models.py imports this module only for such a directory, so other runs never pay for importing transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

MCLIP_CONFIG = "config.json"
TRANSFORMER_CONFIG = "transformer_config.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # either, as transformers saves them


class MclipTextTower(nn.Module):
    """MultilingualCLIP's text path: XLM-R, attention-mask mean pooling, LinearTransformation.

    Attribute names match the released state dicts (transformer.*, LinearTransformation.*). It takes
    the (B, 2, L) tensor MclipTokenizer returns (ids and mask stacked), so the worker moves and
    encodes it exactly like open_clip's token tensors."""

    def __init__(self, config: XLMRobertaConfig, out_dim: int, pooler: bool):
        super().__init__()
        self.transformer = XLMRobertaModel(config, add_pooling_layer=pooler)  # the pooler is unused, kept so released keys load
        self.LinearTransformation = nn.Linear(config.hidden_size, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0], tokens[:, 1]
        embs = self.transformer(input_ids=ids, attention_mask=mask)[0]
        pooled = (embs * mask.unsqueeze(2)).sum(dim=1) / mask.sum(dim=1)[:, None]
        return self.LinearTransformation(pooled)


class MclipTokenizer:
    """The directory's XLM-R tokenizer, padded per batch as M-CLIP's forward pads; truncated at the
    model's position limit (M-CLIP would fail there instead; shorter texts are tokenized the same)."""

    def __init__(self, tokenizer: XLMRobertaTokenizerFast, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)


def load_mclip(directory: str, device: torch.device, clip_dim: int) -> tuple[MclipTextTower, MclipTokenizer, str, Path]:
    """The tower, its tokenizer, a model name for the row ids and the weights file (for its digest)."""
    root = Path(directory)
    mclip = _read_json(root / MCLIP_CONFIG, "M-CLIP's config.json")
    missing = [k for k in ("modelBase", "transformerDimensions", "numDims") if k not in mclip]
    if mclip.get("model_type") != "M-CLIP" or missing:
        raise ValueError(
            f"{root / MCLIP_CONFIG} is not an M-CLIP config (expected model_type 'M-CLIP' with modelBase, "
            f"transformerDimensions and numDims; got model_type {mclip.get('model_type')!r}, missing {missing})"
        )
    if int(mclip["numDims"]) != clip_dim:
        raise ValueError(f"multilingual text model {directory} embeds into numDims={mclip['numDims']} dims, the CLIP into {clip_dim}")
    base = _read_json(
        root / TRANSFORMER_CONFIG,
        f"the config.json of M-CLIP's base model {mclip['modelBase']!r} (altlake never fetches it from a hub; copy it into the directory under this name)",
    )
    if base.get("model_type") != "xlm-roberta":
        raise ValueError(f"{root / TRANSFORMER_CONFIG} has model_type {base.get('model_type')!r}; only XLM-RoBERTa M-CLIP towers are supported")
    config = XLMRobertaConfig.from_dict(base)
    if config.hidden_size != int(mclip["transformerDimensions"]):
        raise ValueError(
            f"{root / TRANSFORMER_CONFIG} has hidden_size {config.hidden_size}, M-CLIP's transformerDimensions is {mclip['transformerDimensions']}"
        )
    # Without tokenizer.json transformers quietly builds a 5-token tokenizer that maps every word to <unk>.
    if not (root / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(
            f"M-CLIP directory {root} has no {TOKENIZER_FILE}: the XLM-R tokenizer saved by transformers (M-CLIP uses its base model's unchanged)"
        )
    tokenizer = XLMRobertaTokenizerFast.from_pretrained(str(root), local_files_only=True)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"{root / TOKENIZER_FILE} has {len(tokenizer)} tokens, more than the model's vocab_size {config.vocab_size}: not this model's tokenizer"
        )
    weights = next((root / name for name in WEIGHT_FILES if (root / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"no M-CLIP weights in {root}: expected {' or '.join(WEIGHT_FILES)}")
    state_dict = _load_state_dict(weights)
    tower = MclipTextTower(config, clip_dim, pooler=any(k.startswith("transformer.pooler.") for k in state_dict))
    # Checkpoints from older transformers also hold buffers it now rebuilds (embeddings.position_ids): drop those only.
    rebuilt = {name for name, _ in tower.named_buffers()} - tower.state_dict().keys()
    tower.load_state_dict({k: v.float() for k, v in state_dict.items() if k not in rebuilt})
    tower.to(device).eval()
    # XLM-R's positions start after padding_idx, so max_position_embeddings - (pad_token_id + 1) tokens fit.
    tokenizer = MclipTokenizer(tokenizer, config.max_position_embeddings - config.pad_token_id - 1)
    return tower, tokenizer, f"m-clip-{str(mclip['modelBase']).replace('/', '-')}", weights


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"M-CLIP directory {path.parent} has no {path.name}: {what}")
    return json.loads(path.read_text())


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)
