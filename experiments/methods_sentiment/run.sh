#!/usr/bin/env bash
# Every method on MiniLM, movie-review sentiment, 2 seeds x {100, 1000, all} training
# examples at one fixed compute budget (60 steps of 16 rows: the budgets differ in how
# many distinct rows those steps draw from); SmolLM2 LoRA and SmolLM2 zero- and 4-shot
# beside them; then the table and plots. Run from the repository root:
#     bash experiments/methods_sentiment/run.sh
# The variables below shrink the study (tests/test_studies.py runs a tiny version).
set -u
ROOT=${ROOT:-experiments/methods_sentiment/runs}
OUT=${OUT:-experiments/methods_sentiment/report.md}
ENCODER=${ENCODER:-minilm}
DECODER=${DECODER:-smollm2}
SEEDS=${SEEDS:-0,1}  # a third seed: 21 more points, ~45 CPU-minutes here (not run)
METHODS=${METHODS:-probe,prompt,prefix,lora,adapter,bitfit,full}
BUDGETS=${BUDGETS:-100,1000,all}
read -ra EXTRA <<< "${EXTRA:-}"  # --config.* flags for every point, after the study's
BUDGET=(--config.train.max_steps=60 --config.data.batch_size=16
        --config.data.eval_examples=256 --config.data.test_examples=512
        --config.data.bucket_step=32 --config.train.prng_impl=rbg "${EXTRA[@]}")
python -m ftjax.sweep --config "configs/sentiment.py:model=$ENCODER" --root "$ROOT" \
    --grid "train.seed=$SEEDS" --grid "method=$METHODS" \
    --grid "data.train_examples=$BUDGETS" "${BUDGET[@]}"
python -m ftjax.sweep --config configs/sentiment.py:method=lora --root "$ROOT" \
    --grid "model=$DECODER" --grid train.seed=0 --grid "data.train_examples=$BUDGETS" \
    "${BUDGET[@]}"
# Prompting: nothing trained; the 4 demonstrations are drawn from the training split.
python -m ftjax.sweep --entry prompt --config "configs/sentiment_prompt.py:model=$DECODER" \
    --root "$ROOT" --grid "model=$DECODER" --grid task.shots=0 \
    --config.data.test_examples=512 "${EXTRA[@]}" --seeds=1
python -m ftjax.sweep --entry prompt --config "configs/sentiment_prompt.py:model=$DECODER" \
    --root "$ROOT" --grid "model=$DECODER" --grid task.shots=4 --grid task.shot_seed=0 \
    --config.data.test_examples=512 "${EXTRA[@]}" --seeds=1
python -m ftjax.report "$ROOT" --out "$OUT"
