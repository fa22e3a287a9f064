"""Writes the randomly initialised T5 and GPT-2 checkpoints of the families study (no
pretrained T5 or GPT-2 weights reach this machine): 2 layers, 128 wide, MiniLM's
WordPiece tokenizer, seed 0.

    python experiments/methods_families/make_models.py experiments/methods_families/models
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers.tiny import make_checkpoint  # noqa: E402 - the test suite's tiny models

WIDE = dict(hidden_size=128, num_heads=4, intermediate_size=512, num_layers=2)


def main(out: str) -> None:
    for family, extra in (("t5", {"head_dim": 32, "num_decoder_layers": 2}), ("gpt2", {})):
        folder = Path(out) / f"random-{family}"
        if not (folder / "config.json").is_file():
            make_checkpoint(folder, family, seed=0, **WIDE, **extra)
        print(folder)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "experiments/methods_families/models")
