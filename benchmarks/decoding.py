"""Decoding speed, before/after in one process, alternating (issue 22, item 3).

    python benchmarks/decoding.py t5        # cross-attention K/V cached vs per step
    python benchmarks/decoding.py kshot     # k-shot seq2seq evaluation, shared demos

`t5`: a random T5 (4 + 4 layers, d_model 256, vocabulary 32128) generates
`--new` tokens for `--rows` sources of `--source` tokens, EOS never reached (every row
runs every step), greedy, beam search and sampling, with the cross-attention keys and
values projected once per source (`generation.generate(cache_context=True)`, after) and
at every step (`cache_context=False`, before). Each variant is compiled outside the
timed calls; the timed calls alternate and the ratio is the median over pairs. The
tokens of both are checked identical.

`kshot`: a k-shot seq2seq evaluation with a decoder (SmolLM2-135M by default, the
bundled GGUF): `task.eval_outputs` (teacher-forced loss + greedy generation) jitted over
every evaluation batch of `--rows` synthetic rows (reverse a list of words), the
`--shots` demonstrations encoded once for generation (`TextToText.share_context`, after)
or within every row's prompt (before). Every batch shape compiles before the timing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def timed(run, *args) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = jax.block_until_ready(run(*args))
    return time.perf_counter() - start, np.asarray(out)


def alternate(before, after, args: tuple, pairs: int) -> dict:
    """Median seconds of each and of their per-pair ratio; both compiled first, the
    order within a pair swapped every pair; the outputs must be token-identical."""
    _, want = timed(before, *args)
    _, got = timed(after, *args)
    if not np.array_equal(want, got):
        raise AssertionError("before and after generate different tokens")
    seconds = {"before": [], "after": []}
    for i in range(pairs):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        for name in order:
            seconds[name].append(timed(before if name == "before" else after, *args)[0])
    ratios = [b / a for b, a in zip(seconds["before"], seconds["after"], strict=True)]
    return {
        "before_s": statistics.median(seconds["before"]),
        "after_s": statistics.median(seconds["after"]),
        "speedup": statistics.median(ratios),
    }


def t5_rows(args) -> list[dict]:
    from ftjax.models import T5Config, T5Model, generation, init_params

    config = T5Config(
        vocab_size=32128, hidden_size=args.d_model, head_dim=64, num_heads=args.d_model // 64,
        intermediate_size=4 * args.d_model, num_layers=args.layers,
        num_decoder_layers=args.layers, dropout=0.0,
    )  # fmt: skip
    model = T5Model(config)
    params = init_params(model, 0)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(2, config.vocab_size, (args.rows, args.source)), jnp.int32)
    mask = jnp.ones_like(ids)
    strategies = {
        "greedy": {"strategy": "greedy"},
        "beam": {"strategy": "beam", "num_beams": args.beams},
        "sample": {"strategy": "sample", "rng": jax.random.PRNGKey(1)},
    }
    rows = []
    for name in args.strategies.split(","):
        options = dict(strategies[name])
        rng = options.pop("rng", None)

        def variant(cached: bool, options=options):
            def run(params, ids, mask, key):
                return generation.generate(
                    model, params, ids, mask, max_new_tokens=args.new, eos_token_id=-1,
                    pad_token_id=0, rng=key, cache_context=cached, **options,
                )  # fmt: skip

            return jax.jit(run)

        result = alternate(variant(False), variant(True), (params, ids, mask, rng), args.pairs)
        rows.append({"strategy": name, **result})
    return rows


WORDS = (
    "river stone apple green quiet music window paper bright cloud table orange "
    "winter garden silver little morning candle yellow forest ocean simple"
).split()


def reversal_rows(n: int, seed: int):
    import datasets

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 7))))
        rows.append({"source": " ".join(words), "target": " ".join(reversed(words))})
    return datasets.Dataset.from_list(rows)


def kshot_rows(args) -> list[dict]:
    from ftjax.data.batching import batches
    from ftjax.models import from_pretrained, load_tokenizer
    from ftjax.training.config import standalone_task

    model, params = from_pretrained(args.model)
    tokenizer = load_tokenizer(args.model)

    def run(shared: bool):
        task = standalone_task(
            "seq2seq", model, tokenizer, label_column="", shots=args.shots,
            source_prefix="Reverse the words: ", separator="\nReversed:",
            target_delimiter=" ", max_length=args.max_length, max_target_length=args.new,
        )  # fmt: skip
        task.share_context = shared  # read when the step traces: one jit per setting
        task.prepare_data({"train": reversal_rows(64, 1)})
        examples = task.encode(reversal_rows(args.rows, 2), "test")
        limits = task.group_limits()
        feed = [b for b, _ in batches(examples, args.batch, limits, shuffle=False, sort=True)]
        evaluate = jax.jit(lambda p, b: task.eval_outputs(p, b))

        def evaluation():
            return [evaluate(params, b)[1]["generated"] for b in feed]

        return evaluation, len(task.shared_context())

    (before, _), (after, context) = run(False), run(True)
    result = alternate(before, after, (), args.pairs)
    return [{"shots": f"{args.shots} ({context} shared tokens)", **result}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    t5 = sub.add_parser("t5", help="T5 cross-attention K/V cached vs recomputed per step")
    t5.add_argument("--rows", type=int, default=64)
    t5.add_argument("--source", type=int, default=256)
    t5.add_argument("--new", type=int, default=32)
    t5.add_argument("--layers", type=int, default=4)
    t5.add_argument("--d-model", type=int, default=256)
    t5.add_argument("--beams", type=int, default=4)
    t5.add_argument("--strategies", default="greedy,beam,sample")
    kshot = sub.add_parser("kshot", help="k-shot seq2seq evaluation, demonstrations shared")
    kshot.add_argument("--model", default="smollm2")
    kshot.add_argument("--rows", type=int, default=64)
    kshot.add_argument("--shots", type=int, default=4)
    kshot.add_argument("--new", type=int, default=16)
    kshot.add_argument("--batch", type=int, default=16)
    kshot.add_argument("--max-length", type=int, default=256)
    for p in (t5, kshot):
        p.add_argument("--pairs", type=int, default=3, help="alternating timed pairs")
    args = parser.parse_args()
    rows = t5_rows(args) if args.bench == "t5" else kshot_rows(args)
    print(f"| {args.bench} | before s | after s | speedup (median of pairs) |")
    print("|---|---:|---:|---:|")
    for row in rows:
        label = row.get("strategy", row.get("shots", ""))
        print(f"| {label} | {row['before_s']:.2f} | {row['after_s']:.2f} | {row['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
