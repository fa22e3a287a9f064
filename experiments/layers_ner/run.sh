#!/usr/bin/env bash
# Frozen MiniLM features for NER on WNUT-16 (a linear tag head over one layer choice:
# the last layer, the second-to-last, the average of all layers, the last four
# concatenated), against fine-tuning the whole model; 3 seeds, 150 steps of 32 tweets
# each (2.5 epochs). The BERT paper's Table 7 comparison, feature-based. Then the table
# and plots. Run from the repository root: bash experiments/layers_ner/run.sh
set -u
ROOT=${ROOT:-experiments/layers_ner/runs}
BUDGET=(--config.train.max_steps=150 --config.train.prng_impl=rbg --config.data.bucket_step=32)
python -m ftjax.sweep --config configs/ner.py:model=minilm,method=probe --root "$ROOT" \
    --grid train.seed=0,1,2 --grid task.layers=last,-2,mean_all,concat_last4 "${BUDGET[@]}"
python -m ftjax.sweep --config configs/ner.py:model=minilm --root "$ROOT" \
    --grid train.seed=0,1,2 --grid method=full "${BUDGET[@]}"
python -m ftjax.report "$ROOT" --out experiments/layers_ner/report.md
