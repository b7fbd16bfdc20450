"""`altlake convert-nsfw`: LAION's Keras NSFW detector as the torch state dict the worker loads.

LAION released its CLIP-based NSFW detector as Keras SavedModels (clip_autokeras_binary_nsfw.zip for
ViT-L/14, clip_autokeras_nsfw_b32.zip for ViT-B/32). Their weights sit in a TensorFlow checkpoint
(`variables/variables.index` + `variables.data-*`); this module reads that format itself, so the
conversion needs no TensorFlow:

- the index is a LevelDB table (blocks of prefix-compressed keys, a footer with the index block's
  place) whose values are BundleEntryProto messages: dtype, shape, shard, offset and size of each
  tensor in the data files, with a CRC32C;
- the Keras model's layers that hold weights are `layer_with_weights-<i>`: 0 the Normalization
  (mean, variance), then the Dense layers (kernel, bias), which become gpu_workers.models.NsfwHead's
  `norm.*` and `linear_<i>.*` (kernels transposed).
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

_MAGIC = 0xDB4775248B80FB57  # LevelDB's table magic number, the footer's last 8 bytes
_FOOTER = 48
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64}  # TensorFlow's DataType enum
_LAYER = re.compile(r"^layer_with_weights-(\d+)/(\w+)/\.ATTRIBUTES/VARIABLE_VALUE$")


class KerasFormatError(ValueError):
    """The files are not the Keras NSFW detector's SavedModel, with what is wrong."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise KerasFormatError("truncated varint in the checkpoint index")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(message: bytes):
    """(field number, value) of a protobuf message: ints for varints and fixed, bytes for the rest."""
    pos = 0
    while pos < len(message):
        tag, pos = _varint(message, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(message, pos)
        elif wire == 1:
            value, pos = int.from_bytes(message[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(message, pos)
            value, pos = message[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = int.from_bytes(message[pos : pos + 4], "little"), pos + 4
        else:
            raise KerasFormatError(f"unsupported protobuf wire type {wire} in the checkpoint index")
        yield number, value


def _block(table: bytes, offset: int, size: int) -> bytes:
    if offset + size + 5 > len(table):
        raise KerasFormatError("a block of the checkpoint index lies past its end")
    if table[offset + size] != 0:  # the trailer's compression byte: TensorFlow writes bundles uncompressed
        raise KerasFormatError(f"compressed checkpoint index block (type {table[offset + size]}) is not supported")
    return table[offset : offset + size]


def _entries(block: bytes):
    """(key, value) of one table block (keys share prefixes with the previous key)."""
    restarts = int.from_bytes(block[-4:], "little")
    end, pos, key = len(block) - 4 - 4 * restarts, 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + length]
        pos += length


def read_checkpoint(index: bytes, data_shards: list[bytes]) -> dict[str, np.ndarray]:
    """Every numeric tensor of a TensorFlow checkpoint (tensor bundle) by name."""
    if len(index) < _FOOTER or int.from_bytes(index[-8:], "little") != _MAGIC:
        raise KerasFormatError("variables.index is not a TensorFlow checkpoint index (no table footer)")
    footer = index[-_FOOTER:]
    _, pos = _varint(footer, 0)  # the metaindex block: unused by bundles
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    tensors = {}
    for _, handle in _entries(_block(index, index_offset, index_size)):
        offset, pos = _varint(handle, 0)
        size, _ = _varint(handle, pos)
        for key, value in _entries(_block(index, offset, size)):
            if not key:  # the bundle header
                continue
            entry = dict(_fields(value))
            dtype = _DTYPES.get(entry.get(1))
            if dtype is None or 7 in entry:  # strings (the object graph) and sliced tensors are no weights
                continue
            shape = [dict(_fields(dim)).get(1, 0) for number, dim in _fields(entry.get(2, b"")) if number == 2]
            shard, start, length = entry.get(3, 0), entry.get(4, 0), entry.get(5, 0)
            if shard >= len(data_shards) or start + length > len(data_shards[shard]):
                raise KerasFormatError(f"tensor {key.decode()} lies outside its data file")
            raw = data_shards[shard][start : start + length]
            if 6 in entry and _crc32c_masked(raw) != entry[6]:
                raise KerasFormatError(f"tensor {key.decode()} fails its CRC32C check: the data file is damaged")
            tensors[key.decode()] = np.frombuffer(raw, dtype).reshape(shape).copy()
    return tensors


def _crc32c_masked(data: bytes) -> int:
    """CRC32C as TensorFlow stores it (masked: rotated and offset, as LevelDB does)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def saved_model_files(path: Path) -> tuple[bytes, list[bytes]]:
    """variables.index and the data shards of a SavedModel directory or of LAION's zip of one."""
    if path.is_dir():
        found = {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("variables/variables.*")}
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            found = {name: archive.read(name) for name in archive.namelist() if "variables/variables." in name}
    else:
        raise KerasFormatError(f"{path} is neither a SavedModel directory nor a zip of one")
    index = [name for name in found if name.endswith("variables/variables.index")]
    if len(index) != 1:
        raise KerasFormatError(f"{path} holds {len(index)} variables/variables.index files, not one (a Keras SavedModel has one)")
    shards = sorted(name for name in found if re.search(r"variables\.data-\d+-of-\d+$", name))
    if not shards:
        raise KerasFormatError(f"{path} has no variables.data-*-of-* file beside its index")
    return found[index[0]], [found[name] for name in shards]


def nsfw_state_dict(tensors: dict[str, np.ndarray]) -> dict[str, "torch.Tensor"]:  # noqa: F821
    """The Keras model's Normalization and Dense layers as NsfwHead's state dict."""
    import torch

    layers: dict[int, dict[str, np.ndarray]] = {}
    for name, value in tensors.items():
        match = _LAYER.match(name)
        if match:
            layers.setdefault(int(match[1]), {})[match[2]] = value
    if not layers or not {"mean", "variance"} <= set(layers.get(0, {})):
        raise KerasFormatError("no Normalization layer with mean and variance first: not LAION's NSFW detector")
    state = {"norm.mean": layers[0]["mean"].reshape(-1), "norm.variance": layers[0]["variance"].reshape(-1)}
    for i in sorted(layers)[1:]:
        if not {"kernel", "bias"} <= set(layers[i]):
            raise KerasFormatError(f"layer_with_weights-{i} is not a Dense layer (it holds {sorted(layers[i])})")
        state[f"linear_{i}.weight"] = layers[i]["kernel"].T
        state[f"linear_{i}.bias"] = layers[i]["bias"]
    if state[f"linear_{max(layers)}.bias"].shape != (1,):
        raise KerasFormatError("the last Dense layer has more than one unit: not a binary NSFW detector")
    return {key: torch.from_numpy(np.ascontiguousarray(value, np.float32)) for key, value in state.items()}


def convert(source: Path, out: Path) -> dict:
    """Write the torch state dict of LAION's Keras NSFW detector at `source`; return its shape."""
    import torch

    from gpu_workers.models import NsfwHead

    state = nsfw_state_dict(read_checkpoint(*saved_model_files(source)))
    head = NsfwHead.from_state_dict(state)  # refuses what the worker could not load
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    partial.write_bytes(buffer.getvalue())
    partial.replace(out)
    sizes = [head.norm.mean.shape[0], *(getattr(head, f"linear_{i}").out_features for i in range(1, head.n_linear + 1))]
    return {"embed_dim": sizes[0], "layers": sizes}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="LAION's clip_autokeras_*.zip, or the SavedModel directory inside it")
    parser.add_argument("--out", type=Path, required=True, help="the torch state dict to write (a profile's nsfw_head)")


def run(args: argparse.Namespace) -> int:
    shape = convert(args.source, args.out)
    print(f"{args.out}: NSFW head for {shape['embed_dim']}-dim CLIP embeddings, layers {' -> '.join(map(str, shape['layers']))}", file=sys.stderr)
    return 0
