"""A GGUF file's header: its metadata values and tensor table, parsed with `struct`.

The tensors' bytes stay in one read-only memory map of the file, as numpy views of the
same dtypes and shapes `gguf.GGUFReader` gives (so `gguf.quants` dequantises them). The
reader is not used because it builds several numpy views per metadata item: ~7 s for
SmolLM2's 49,152-token vocabulary on a 2-core CPU, where a plain parse takes a fraction
of a second. Little-endian files of GGUF versions 2 and 3 (what llama.cpp writes).
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# GGUF value type -> struct format of one item (8: string and 9: array are read apart).
_SCALARS = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9
# Tensor types stored as plain numbers (the rest are quantised blocks, read as bytes).
_PLAIN = {
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F64: np.float64,
    GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}


class HeaderError(ValueError):
    """The file is not a GGUF file this parser reads; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor of the table: `shape` in GGUF's order (innermost dimension first);
    `data` a view of the file (numbers, or a quantised type's bytes per row)."""

    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray


class _Cursor:
    """Reads little-endian values from a buffer, advancing an offset."""

    def __init__(self, buffer: np.ndarray):
        self.buffer, self.offset = buffer, 0

    def unpack(self, fmt: str) -> tuple:
        try:
            values = struct.unpack_from("<" + fmt, self.buffer, self.offset)
        except struct.error as err:
            raise HeaderError(f"the header ends early, at byte {self.offset}") from err
        self.offset += struct.calcsize("<" + fmt)
        return values

    def string(self) -> str:
        (length,) = self.unpack("Q")
        end = self.offset + length
        if end > len(self.buffer):
            raise HeaderError(f"a string at byte {self.offset} runs past the end of the file")
        text = bytes(self.buffer[self.offset : end]).decode("utf-8", errors="replace")
        self.offset = end
        return text

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])[0]
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.unpack("IQ")
            if item_kind in _SCALARS:  # one unpack for the whole array
                return list(self.unpack(f"{count}{_SCALARS[item_kind]}"))
            return [self.value(item_kind) for _ in range(count)]
        raise HeaderError(f"unknown metadata value type {kind} at byte {self.offset}")


def parse(path: str | Path) -> tuple[dict[str, Any], list[Tensor]]:
    """(metadata {key: value}, tensors in file order) of the GGUF file at `path`."""
    data = np.memmap(path, mode="r")
    cursor = _Cursor(data)
    if bytes(data[:4]) != MAGIC:
        raise HeaderError("it does not start with the GGUF magic bytes")
    cursor.offset = 4
    (version,) = cursor.unpack("I")
    if version not in VERSIONS:
        raise HeaderError(f"GGUF version {version} (readable: {VERSIONS}; big-endian: no)")
    tensor_count, kv_count = cursor.unpack("QQ")
    metadata = {}
    for _ in range(kv_count):
        key = cursor.string()
        (kind,) = cursor.unpack("I")
        metadata[key] = cursor.value(kind)
    infos, names = [], set()
    for _ in range(tensor_count):
        name = cursor.string()
        (dims,) = cursor.unpack("I")
        shape = cursor.unpack(f"{dims}Q")
        raw_type, offset = cursor.unpack("IQ")
        try:
            tensor_type = GGMLQuantizationType(raw_type)
        except ValueError as err:
            raise HeaderError(f"tensor {name!r} has unknown tensor type {raw_type}") from err
        if name in names:
            raise HeaderError(f"tensor {name!r} is listed twice")
        names.add(name)
        infos.append((name, tensor_type, tuple(int(d) for d in shape), offset))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    start = -(-cursor.offset // alignment) * alignment
    return metadata, [_tensor(data, start, *info) for info in infos]


def _tensor(
    data: np.ndarray, start: int, name: str, tensor_type: GGMLQuantizationType,
    shape: tuple[int, ...], offset: int,
) -> Tensor:  # fmt: skip
    rows = tuple(reversed(shape))  # numpy's order: outermost first
    block, block_bytes = GGML_QUANT_SIZES[tensor_type]
    size = int(np.prod(shape)) * block_bytes // block
    begin = start + offset
    if begin + size > len(data):
        raise HeaderError(
            f"tensor {name!r} ({size} bytes at byte {begin}) runs past the end of the file "
            f"({len(data)} bytes): truncated"
        )
    raw = data[begin : begin + size]
    if tensor_type in _PLAIN:
        return Tensor(name, tensor_type, shape, raw.view(_PLAIN[tensor_type]).reshape(rows))
    row_bytes = rows[-1] // block * block_bytes
    return Tensor(name, tensor_type, shape, raw.reshape((*rows[:-1], row_bytes)))
