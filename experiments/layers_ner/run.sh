#!/usr/bin/env bash
# Frozen MiniLM features for NER on WNUT-16 (a linear tag head over one layer choice:
# the last layer, the second-to-last, the average of all layers, the last four
# concatenated), against fine-tuning the whole model; 3 seeds, 150 steps of 32 tweets
# (2.5 epochs). The BERT paper's Table 7 comparison, feature-based. Then the table and
# plots. Run from the repository root: bash experiments/layers_ner/run.sh
# The variables below shrink the study (tests/test_studies.py runs a tiny version).
set -u
ROOT=${ROOT:-experiments/layers_ner/runs}
OUT=${OUT:-experiments/layers_ner/report.md}
MODEL=${MODEL:-minilm}
SEEDS=${SEEDS:-0,1,2}
LAYERS=${LAYERS:-last,-2,mean_all,concat_last4}
read -ra EXTRA <<< "${EXTRA:-}"  # --config.* flags for every point, after the study's
BUDGET=(--config.train.max_steps=150 --config.train.prng_impl=rbg --config.data.bucket_step=32
        "${EXTRA[@]}")
python -m ftjax.sweep --config "configs/ner.py:model=$MODEL,method=probe" --root "$ROOT" \
    --grid "train.seed=$SEEDS" --grid "task.layers=$LAYERS" "${BUDGET[@]}"
python -m ftjax.sweep --config "configs/ner.py:model=$MODEL" --root "$ROOT" \
    --grid "train.seed=$SEEDS" --grid method=full "${BUDGET[@]}"
python -m ftjax.report "$ROOT" --out "$OUT"
