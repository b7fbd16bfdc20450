"""M-CLIP text towers from a local directory: a tiny XLM-RoBERTa with seeded random weights and a
tokenizer trained here, saved in Multilingual-CLIP's layout, loaded through load_models and checked
against MultilingualCLIP.forward computed directly with transformers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

from gpu_workers.models import ModelSpec, load_models

CLIP_DIM = 64  # altlake-tiny's embed_dim (gpu_workers/demo_models/altlake-tiny.json)
HIDDEN = 32
SENTENCES = [
    "two blue squares at the top",
    "zwei blaue Quadrate oben",
    "un cercle rouge à gauche",
    "två gröna trianglar längst ner",
    "три жёлтых круга справа",
    "dos cuadrados azules arriba",
]
TEXTS = ["zwei blaue Quadrate oben", "un cercle rouge à gauche à côté de deux carrés", "три круга", "två gröna trianglar"]
LANGUAGES = ["de", "fr", "ru", "sv"]


pytestmark = pytest.mark.usefixtures("offline")  # conftest: no hub, an empty model cache, one torch thread


def tiny_tokenizer() -> XLMRobertaTokenizerFast:
    """An XLM-R tokenizer (Unigram, XLM-R's special tokens and ids) over a vocabulary trained on SENTENCES."""
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>")
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(SENTENCES, trainer)
    vocab = [(piece, score) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    return XLMRobertaTokenizerFast(vocab=vocab)


def save_mclip(root: Path, fmt: str = "safetensors") -> tuple[XLMRobertaModel, torch.nn.Linear]:
    """Write an M-CLIP directory as Multilingual-CLIP's released checkpoints lay it out; return its modules."""
    tokenizer = tiny_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    transformer = XLMRobertaModel(config).eval()
    linear = torch.nn.Linear(HIDDEN, CLIP_DIM)
    root.mkdir(parents=True)
    tokenizer.save_pretrained(str(root))
    config.to_json_file(str(root / "transformer_config.json"))
    mclip = {
        "architectures": ["MultilingualCLIP"],
        "model_type": "M-CLIP",
        "modelBase": "xlm-roberta-large",
        "transformerDimensions": HIDDEN,
        "numDims": CLIP_DIM,
    }
    (root / "config.json").write_text(json.dumps(mclip))
    state_dict = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    state_dict |= {f"LinearTransformation.{k}": v for k, v in linear.state_dict().items()}
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(root / "model.safetensors"))
    else:  # as transformers 4.x saved the released files: position_ids was still a persistent buffer
        state_dict["transformer.embeddings.position_ids"] = torch.arange(config.max_position_embeddings).expand((1, -1))
        torch.save(state_dict, root / "pytorch_model.bin")
    return transformer, linear


def mclip_forward(root: Path, transformer: XLMRobertaModel, linear: torch.nn.Linear, texts: list[str]) -> np.ndarray:
    """MultilingualCLIP.forward (multilingual_clip/pt_multilingual_clip.py), then L2-normalised."""
    tokenizer = XLMRobertaTokenizerFast.from_pretrained(str(root), local_files_only=True)
    with torch.no_grad():
        txt_tok = tokenizer(texts, padding=True, return_tensors="pt")
        embs = transformer(**txt_tok)[0]
        att = txt_tok["attention_mask"]
        embs = (embs * att.unsqueeze(2)).sum(dim=1) / att.sum(dim=1)[:, None]
        out = linear(embs)
    return torch.nn.functional.normalize(out, dim=-1).numpy()


def spec(text_model: str) -> ModelSpec:
    return ModelSpec(multilingual_text_model=text_model, nsfw_head=None, watermark_head=None, aesthetic_head=None)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_mclip_directory_embeds_non_english_captions_like_multilingual_clip(tmp_path, fmt):
    root = tmp_path / "m-clip"
    transformer, linear = save_mclip(root, fmt)
    loaded = load_models(spec(str(root)))
    english = "two blue squares at the top"
    out = loaded.embed_texts([TEXTS[0], english, *TEXTS[1:]], [LANGUAGES[0], "en", *LANGUAGES[1:]])
    assert out.dtype == np.float32 and out.shape == (5, CLIP_DIM)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out[[0, 2, 3, 4]], mclip_forward(root, transformer, linear, TEXTS), atol=1e-5)
    # Padding is masked out of the mean: a caption alone embeds as it does in a batch of longer ones.
    np.testing.assert_allclose(loaded.embed_texts([TEXTS[2]], ["ru"])[0], out[3], atol=1e-5)
    # English still goes through CLIP's own text tower.
    clip_only = load_models(spec(None))
    np.testing.assert_allclose(out[1], clip_only.embed_texts([english], ["en"])[0], atol=1e-5)
    weights = root / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    assert loaded.text_model_for("de") == loaded.multilingual_text_id == f"m-clip-xlm-roberta-large@sha256:{digest}"
    assert loaded.text_model_for("en") == loaded.clip_id
    # M-CLIP ships no threshold: non-English captions keep the CLIP's.
    assert loaded.thresholds == clip_only.thresholds


def test_captions_past_the_position_limit_are_truncated(tmp_path):
    root = tmp_path / "m-clip"
    save_mclip(root)
    loaded = load_models(spec(str(root)))
    long = " ".join(SENTENCES * 10)
    out = loaded.embed_texts([long, TEXTS[0]], ["de", "de"])
    assert out.shape == (2, CLIP_DIM) and np.isfinite(out).all()


def test_mclip_directory_mistakes_are_clear_errors(tmp_path):
    root = tmp_path / "m-clip"
    save_mclip(root)
    config = json.loads((root / "config.json").read_text())

    (root / "config.json").write_text(json.dumps(config | {"numDims": 768}))
    with pytest.raises(ValueError, match="numDims=768 dims, the CLIP into 64"):
        load_models(spec(str(root)))

    (root / "config.json").write_text(json.dumps(config | {"transformerDimensions": 1024}))
    with pytest.raises(ValueError, match="hidden_size 32, M-CLIP's transformerDimensions is 1024"):
        load_models(spec(str(root)))

    (root / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))
    with pytest.raises(ValueError, match="is not an M-CLIP config"):
        load_models(spec(str(root)))

    (root / "config.json").write_text(json.dumps(config))
    (root / "transformer_config.json").rename(root / "elsewhere.json")
    with pytest.raises(FileNotFoundError, match="no transformer_config.json: the config.json of M-CLIP's base model 'xlm-roberta-large'"):
        load_models(spec(str(root)))

    (root / "elsewhere.json").rename(root / "transformer_config.json")
    (root / "tokenizer.json").rename(root / "tokenizer.bak")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_models(spec(str(root)))

    (root / "tokenizer.bak").rename(root / "tokenizer.json")
    base = json.loads((root / "transformer_config.json").read_text())
    (root / "transformer_config.json").write_text(json.dumps(base | {"vocab_size": 20}))
    with pytest.raises(ValueError, match="more than the model's vocab_size 20"):
        load_models(spec(str(root)))

    (root / "transformer_config.json").write_text(json.dumps(base))
    (root / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="expected model.safetensors or pytorch_model.bin"):
        load_models(spec(str(root)))
