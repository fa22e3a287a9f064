#!/usr/bin/env bash
# Every method on MiniLM, movie-review sentiment, 3 seeds x {100, 1000, all} training
# examples, one fixed compute budget (60 steps of 16 rows: budgets differ in how many
# distinct rows those steps draw from); SmolLM2 LoRA and SmolLM2 zero-/few-shot beside.
# Then the table and plots. Run from the repository root: bash experiments/methods_sentiment/run.sh
set -u
ROOT=${ROOT:-experiments/methods_sentiment/runs}
BUDGET=(--config.train.max_steps=60 --config.data.batch_size=16
        --config.data.eval_examples=256 --config.data.test_examples=512
        --config.data.bucket_step=32 --config.train.prng_impl=rbg)
python -m ftjax.sweep --config configs/sentiment.py:model=minilm --root "$ROOT" \
    --grid train.seed=0,1,2 --grid method=probe,prompt,prefix,lora,adapter,bitfit,full \
    --grid data.train_examples=100,1000,all "${BUDGET[@]}"
python -m ftjax.sweep --config configs/sentiment.py:method=lora --root "$ROOT" \
    --grid model=smollm2 --grid train.seed=0 --grid data.train_examples=100,1000,all "${BUDGET[@]}"
# Prompting: nothing trained; few-shot demonstrations drawn from the training split.
python -m ftjax.sweep --entry prompt --config configs/sentiment_prompt.py:model=smollm2 \
    --root "$ROOT" --grid model=smollm2 --grid task.shots=0 --config.data.test_examples=512 \
    --seeds=1
python -m ftjax.sweep --entry prompt --config configs/sentiment_prompt.py:model=smollm2 \
    --root "$ROOT" --grid model=smollm2 --grid task.shots=4 --grid task.shot_seed=0 \
    --config.data.test_examples=512 --seeds=1
python -m ftjax.report "$ROOT" --out experiments/methods_sentiment/report.md
