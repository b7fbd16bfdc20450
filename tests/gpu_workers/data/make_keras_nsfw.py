"""Writes keras_nsfw_b32.zip: a Keras SavedModel in the layout of LAION's CLIP-based NSFW detector
for ViT-B/32 (clip_autokeras_nsfw_b32.zip: Normalization, Dense 32, ReLU, Dropout, Dense 32, ReLU,
Dense 1, sigmoid), random weights, and keras_nsfw_b32_expected.npz: inputs and TensorFlow's outputs.

The fixture of tests/gpu_workers/test_convert.py, made by TensorFlow itself because the converter
reads its files without it. TensorFlow is no dependency of altlake; run this in its own venv:

    uv venv tf && VIRTUAL_ENV=tf uv pip install tensorflow-cpu==2.15.1   # Keras 2, as LAION used
    tf/bin/python tests/gpu_workers/data/make_keras_nsfw.py
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

HERE = Path(__file__).parent
DIM, HIDDEN = 512, (32, 32)

rng = np.random.default_rng(15)
inputs = tf.keras.Input(shape=(DIM,), name="input_1")
norm = tf.keras.layers.Normalization(axis=-1)
norm.adapt(rng.normal(0.02, 0.05, (256, DIM)).astype(np.float32))  # CLIP-like statistics: mean, variance and count
x = norm(inputs)
x = tf.keras.layers.Dense(HIDDEN[0])(x)
x = tf.keras.layers.ReLU()(x)
x = tf.keras.layers.Dropout(0.5)(x)
x = tf.keras.layers.Dense(HIDDEN[1])(x)
x = tf.keras.layers.ReLU()(x)
x = tf.keras.layers.Dense(1)(x)
outputs = tf.keras.layers.Activation("sigmoid", name="classification_head_1")(x)
model = tf.keras.Model(inputs, outputs)
for layer in model.layers:
    if isinstance(layer, tf.keras.layers.Dense):
        kernel, bias = layer.get_weights()
        layer.set_weights([rng.normal(0, 0.05, kernel.shape).astype(np.float32), rng.normal(0, 0.1, bias.shape).astype(np.float32)])
model.compile(optimizer="adam", loss="binary_crossentropy")  # as trained: the checkpoint also holds optimizer slots

embeddings = rng.normal(0, 1, (16, DIM)).astype(np.float32)
embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
model.fit(embeddings, (rng.random(16) > 0.5).astype(np.float32), epochs=1, verbose=0)  # creates the slots
expected = model.predict(embeddings, verbose=0)[:, 0]

with tempfile.TemporaryDirectory() as tmp:
    saved = Path(tmp) / "clip_autokeras_nsfw_b32"
    model.save(saved)  # TF 2.15: a SavedModel directory, as LAION's zips hold
    shutil.make_archive(str(HERE / "keras_nsfw_b32"), "zip", tmp, saved.name)
np.savez(HERE / "keras_nsfw_b32_expected.npz", embeddings=embeddings, punsafe=expected)
print("wrote", HERE / "keras_nsfw_b32.zip", expected[:4])
