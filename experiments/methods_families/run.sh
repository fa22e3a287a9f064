#!/usr/bin/env bash
# The method x family matrix on one task (movie-review sentiment): each method on a
# BERT-style encoder (MiniLM), a GPT-style decoder (SmolLM2, Llama family) and, as no
# pretrained T5 or GPT-2 reaches this machine, randomly initialised T5 and GPT-2 (2
# layers, 128 wide: these cells show that the method runs and trains on the family, not
# a quality). A tiny budget that finishes on 2 CPU cores: 30 steps of 8 rows, 256 test
# sentences, one seed. Run from the repository root: bash experiments/methods_families/run.sh
set -u
ROOT=${ROOT:-experiments/methods_families/runs}
MODELS=${MODELS:-experiments/methods_families/models}
python experiments/methods_families/make_models.py "$MODELS"
BUDGET=(--config.train.max_steps=30 --config.data.batch_size=8
        --config.data.eval_examples=128 --config.data.test_examples=256
        --config.data.bucket_step=32 --config.train.prng_impl=rbg)
python -m ftjax.sweep --config configs/sentiment.py --root "$ROOT" \
    --grid model=minilm,smollm2,"$MODELS/random-gpt2","$MODELS/random-t5" \
    --grid method=probe,full,bitfit,lora,adapter,prefix,prompt "${BUDGET[@]}"
python -m ftjax.report "$ROOT" --out experiments/methods_families/report.md
