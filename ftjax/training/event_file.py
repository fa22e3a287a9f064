"""TensorBoard event files of scalars, written directly.

A run logs scalars only, and an event file of scalars is small to write by hand: a
TFRecord stream of `Event` protocol buffers. tensorboardX would do it, but importing it
imports torch wherever torch is installed (its writer probes for torch tensors): about
2 s added to every run in such an environment. The bytes are tensorboardX's own
(tests/test_event_file.py compares them).

Record framing (TFRecord): little-endian uint64 length, the masked CRC-32C of those 8
bytes, the payload, the masked CRC-32C of the payload.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """TFRecord's masked checksum (a CRC of data holding CRCs is weak unmasked)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return (
        length
        + struct.pack("<I", masked_crc(length))
        + payload
        + struct.pack("<I", masked_crc(payload))
    )


# Protocol buffer wire format, the few fields used here.
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2) + _varint(len(data)) + data


def event(
    wall_time: float, step: int = 0, *, file_version: str = "", summary: bytes = b""
) -> bytes:
    """An `Event`: wall_time (1, double), step (2, int64), file_version (3), summary (5)."""
    out = _field(1, 1) + struct.pack("<d", wall_time)
    if step:
        out += _field(2, 0) + _varint(step & 0xFFFFFFFFFFFFFFFF)
    if file_version:
        out += _bytes_field(3, file_version.encode())
    if summary:
        out += _bytes_field(5, summary)
    return out


_NOT_IN_TAGS = re.compile(r"[^-/\w\.]")  # TensorBoard's tag characters; others become _


def scalar_summary(tag: str, value: float) -> bytes:
    """A `Summary` of one `Value`: tag (1) and simple_value (2, float32)."""
    tag = _NOT_IN_TAGS.sub("_", tag).lstrip("/")
    value_message = _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", value)
    return _bytes_field(1, value_message)


class EventFileWriter:
    """Scalars into `logdir/events.out.tfevents.<time>.<host>`, as TensorBoard reads."""

    def __init__(self, logdir: str | Path):
        Path(logdir).mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = Path(logdir) / f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}"
        self.file = open(self.path, "ab")  # noqa: SIM115 - kept open for the run
        self.file.write(record(event(now, file_version="brain.Event:2")))
        self.file.flush()

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float | None = None):
        when = time.time() if wall_time is None else wall_time
        self.file.write(record(event(when, step, summary=scalar_summary(tag, float(value)))))

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
