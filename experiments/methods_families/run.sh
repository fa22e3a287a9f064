#!/usr/bin/env bash
# The method x family matrix on one task (movie-review sentiment): each method on a
# BERT-style encoder (MiniLM), a GPT-style decoder (SmolLM2, Llama family) and, as no
# pretrained T5 or GPT-2 reaches this machine, randomly initialised T5 and GPT-2 (2
# layers, 128 wide: their cells show that the method runs and trains on the family, not
# a quality). A tiny budget that finishes on 2 CPU cores: 30 steps of 8 rows, 256 test
# sentences, one seed. Run from the repository root: bash experiments/methods_families/run.sh
# The variables below shrink the study (tests/test_studies.py runs a tiny version).
set -u
ROOT=${ROOT:-experiments/methods_families/runs}
OUT=${OUT:-experiments/methods_families/report.md}
M=${MODELS:-experiments/methods_families/models}
FAMILY_MODELS=${FAMILY_MODELS:-minilm,$M/random-gpt2,$M/random-t5,smollm2}
METHODS=${METHODS:-probe,full,bitfit,lora,adapter,prefix,prompt}
read -ra EXTRA <<< "${EXTRA:-}"  # --config.* flags for every point, after the study's
python experiments/methods_families/make_models.py "$M"
BUDGET=(--config.train.max_steps=30 --config.data.batch_size=8
        --config.data.eval_examples=128 --config.data.test_examples=256
        --config.data.bucket_step=32 --config.train.prng_impl=rbg "${EXTRA[@]}")
python -m ftjax.sweep --config configs/sentiment.py --root "$ROOT" \
    --grid "model=$FAMILY_MODELS" --grid "method=$METHODS" "${BUDGET[@]}"
python -m ftjax.report "$ROOT" --out "$OUT"
