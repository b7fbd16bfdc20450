"""`altlake convert-nsfw`: LAION's Keras NSFW detector read without TensorFlow.

The fixture is a Keras SavedModel in the layout of LAION's clip_autokeras_nsfw_b32.zip written by
TensorFlow 2.15 itself, with TensorFlow's own outputs for 16 embeddings (data/make_keras_nsfw.py)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from altlake_cli.main import main as altlake
from gpu_workers import models as M
from gpu_workers.keras_nsfw import read_checkpoint, saved_model_files

DATA = Path(__file__).parent / "data"
KERAS_ZIP = DATA / "keras_nsfw_b32.zip"
EXPECTED = np.load(DATA / "keras_nsfw_b32_expected.npz")


def test_the_converted_head_gives_tensorflow_s_outputs_inside_the_worker(tmp_path, capsys):
    out = tmp_path / "nsfw_b32.pth"
    assert altlake(["convert-nsfw", str(KERAS_ZIP), "--out", str(out)]) == 0
    assert "NSFW head for 512-dim CLIP embeddings, layers 512 -> 32 -> 32 -> 1" in capsys.readouterr().err

    models = M.load_models(M.ModelSpec(clip_model="ViT-B-32", nsfw_head=str(out), watermark_head=None, aesthetic_head=None))
    punsafe = models.punsafe(EXPECTED["embeddings"])
    assert np.allclose(punsafe, EXPECTED["punsafe"], atol=1e-6) and np.ptp(EXPECTED["punsafe"]) > 0.01
    assert models.nsfw_id.startswith("laion-nsfw-mlp@sha256:")


def test_the_unzipped_saved_model_converts_the_same(tmp_path):
    with zipfile.ZipFile(KERAS_ZIP) as archive:
        archive.extractall(tmp_path / "unzipped")
    from_zip = read_checkpoint(*saved_model_files(KERAS_ZIP))
    from_dir = read_checkpoint(*saved_model_files(tmp_path / "unzipped" / "clip_autokeras_nsfw_b32"))
    assert from_zip.keys() == from_dir.keys() and all(np.array_equal(from_zip[k], from_dir[k]) for k in from_zip)
    kernel = from_zip["layer_with_weights-1/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    assert kernel.shape == (512, 32) and kernel.dtype == np.float32
    assert altlake(["convert-nsfw", str(tmp_path / "unzipped"), "--out", str(tmp_path / "head.pth")]) == 0
    assert torch.load(tmp_path / "head.pth", weights_only=True)["linear_1.weight"].shape == (32, 512)


def test_a_damaged_or_foreign_file_is_one_line_and_no_head(tmp_path, capsys):
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(KERAS_ZIP) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("variables.data-00000-of-00001"):
                data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
            target.writestr(item, data)
    assert altlake(["convert-nsfw", str(damaged), "--out", str(tmp_path / "a.pth")]) == 2
    assert "fails its CRC32C check" in capsys.readouterr().err and not (tmp_path / "a.pth").exists()

    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("model/variables/variables.index", b"not a table" * 10)
        archive.writestr("model/variables/variables.data-00000-of-00001", b"")
    assert altlake(["convert-nsfw", str(foreign), "--out", str(tmp_path / "b.pth")]) == 2
    assert "not a TensorFlow checkpoint index" in capsys.readouterr().err
