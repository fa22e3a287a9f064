"""ftjax's own TensorBoard event files hold the records tensorboardX writes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ftjax.training import event_file
from ftjax.training.metrics import MetricWriter

# (tag, value, step): a tag with a character TensorBoard does not take, one with a
# leading slash, a step past 32 bits, step 0 (not written in the proto)
SCALARS = [("train/loss", 0.6931, 1), ("train/lr", 5e-4, 1), ("validation/accuracy", 0.8485, 530),
           ("eval/exact match", 12.5, 2**40), ("/lead", -3.0, 0)]  # fmt: skip
WALL_TIME = 1700000000.25


def read_records(path: Path) -> list[bytes]:
    """Payloads of a TFRecord file, every checksum verified."""
    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[at + 8 : at + 12])[0] == event_file.masked_crc(header)
        payload = data[at + 12 : at + 12 + length]
        crc = data[at + 12 + length : at + 16 + length]
        assert struct.unpack("<I", crc)[0] == event_file.masked_crc(payload)
        out.append(payload)
        at += 16 + length
    return out


def only_file(folder: Path) -> Path:
    (path,) = folder.glob("events.out.tfevents.*")
    return path


def test_crc32c_matches_the_standard_check_value():
    assert event_file.crc32c(b"123456789") == 0xE3069283  # CRC-32C's published check value
    assert event_file.crc32c(b"") == 0


def test_scalar_events_are_byte_for_byte_tensorboardx(tmp_path):
    tensorboardx = pytest.importorskip("tensorboardX")  # the test extra's reference
    reference = tensorboardx.SummaryWriter(str(tmp_path / "reference"))
    ours = event_file.EventFileWriter(tmp_path / "ours")
    for tag, value, step in SCALARS:
        reference.add_scalar(tag, value, step, walltime=WALL_TIME)
        ours.add_scalar(tag, value, step, wall_time=WALL_TIME)
    reference.close()
    ours.close()
    theirs, mine = read_records(only_file(tmp_path / "reference")), read_records(ours.path)
    assert len(mine) == len(SCALARS) + 1
    assert mine[1:] == theirs[1:]
    # the first event: the file version, at the file's creation time (a double, 9 bytes)
    assert mine[0][9:] == theirs[0][9:] == b"\x1a\x0dbrain.Event:2"


def test_a_runs_metric_writer_logs_scalars_tensorboard_and_jsonl(tmp_path):
    writer = MetricWriter(tmp_path)
    writer.write(3, "train", {"loss": 0.5, "note": "text is jsonl only"})
    writer.close()
    records = read_records(only_file(tmp_path / "tensorboard"))
    assert len(records) == 2 and b"train/loss" in records[1] and b"note" not in records[1]
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 3, "kind": "train", "loss": 0.5, "note": "text is jsonl only"}
