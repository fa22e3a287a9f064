"""`python -m ftjax.methods --model minilm`: what each method trains on that model."""

from __future__ import annotations

import sys

from ftjax.core import partition
from ftjax.methods.table import table
from ftjax.models import hub


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m ftjax.methods", description="what each method trains on a model"
    )
    parser.add_argument("--model", default="minilm", help="asset name, checkpoint folder or hub id")
    parser.add_argument("--num_labels", type=int, default=2)
    args = parser.parse_args(argv)
    model, params = hub.from_pretrained(args.model)
    print(
        f"{args.model}: {type(model).__name__}, {partition.count(params):,} backbone params, "
        f"classification head with {args.num_labels} labels"
    )
    print(table(model, params, args.num_labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
