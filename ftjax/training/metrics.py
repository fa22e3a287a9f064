"""Where run metrics go: TensorBoard event files, a JSONL log and the terminal.

On a terminal, a progress bar with ETA; otherwise (CI, a log file) a plain line every
`log_every` steps. Only process 0 writes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np

from ftjax.training.event_file import EventFileWriter


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic, jax.Array)):
        return np.asarray(value).item()
    return value


class MetricWriter:
    def __init__(self, workdir: str | Path):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self.tb = EventFileWriter(Path(workdir) / "tensorboard")
        self.jsonl = open(Path(workdir) / "metrics.jsonl", "a")  # noqa: SIM115 - kept open

    def write(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        plain = {k: _plain(v) for k, v in metrics.items()}
        for key, value in plain.items():
            if isinstance(value, (int, float)):
                self.tb.add_scalar(f"{kind}/{key}", value, step)
        self.tb.flush()
        self.jsonl.write(json.dumps({"step": step, "kind": kind, **plain}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.jsonl.close()


class Progress:
    """A tqdm bar on a TTY; periodic plain lines elsewhere."""

    def __init__(self, total: int, initial: int, log_every: int, stream: TextIO = sys.stderr):
        self.total, self.log_every, self.stream = total, max(log_every, 1), stream
        self.start, self.start_step = time.perf_counter(), initial
        self.bar = None
        if jax.process_index() == 0 and stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, file=stream, dynamic_ncols=True)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if jax.process_index() != 0:
            return
        text = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(text, refresh=False)
        elif step % self.log_every == 0 or step == self.total:
            done = step - self.start_step
            elapsed = time.perf_counter() - self.start
            eta = elapsed / done * (self.total - step) if done else float("nan")
            print(
                f"step {step}/{self.total} {text} elapsed {elapsed:.0f}s eta {eta:.0f}s",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
