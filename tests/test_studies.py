"""The shipped studies (experiments/*/run.sh), each run as a tiny version of itself: the
same script and commands on tiny models and data, a grid cut down by its variables."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import synthetic
from tests.helpers.tiny import make_checkpoint, make_dataset, write_splits

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = (
    "--config.train.max_steps=2 --config.data.eval_examples=16 --config.data.test_examples=16"
)

# Minutes, not seconds: outside the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    return {
        "bert": make_checkpoint(base / "bert"),
        # few-shot prompts of real review sentences run past 128 positions
        "llama": make_checkpoint(base / "llama", "llama", max_position_embeddings=512),
        "sentiment": make_dataset(base / "sentiment"),
        "ner": write_splits(
            base / "ner",
            synthetic.splits_of(
                synthetic.ner_rows, sizes={"train": 32, "validation": 16, "test": 16}
            ),
        ),
    }


def run_study(name: str, tmp_path: Path, **variables: str) -> tuple[str, list[dict]]:
    """Runs experiments/NAME/run.sh; (its report, every point's record)."""
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        PATH=f"{Path(os.sys.executable).parent}:{os.environ['PATH']}",
        ROOT=str(tmp_path / "runs"), OUT=str(tmp_path / "report.md"), **variables,
    )  # fmt: skip
    proc = subprocess.run(
        ["bash", f"experiments/{name}/run.sh"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*/point.json"))]
    assert records and all(r["status"] == "finished" for r in records), records
    plots = tmp_path / "plots"
    assert all((plots / png).stat().st_size > 10_000 for png in ("metric_vs_params.png",))
    return (tmp_path / "report.md").read_text(), records


def test_methods_sentiment_study(tmp_path, tiny):
    report, records = run_study(
        "methods_sentiment", tmp_path,
        ENCODER=str(tiny["bert"]), DECODER=str(tiny["llama"]), SEEDS="0", METHODS="lora",
        BUDGETS="16", EXTRA=f"--config.data.name={tiny['sentiment']} {TINY_RUN}",
    )  # fmt: skip
    assert {r["name"] for r in records} == {
        "seed=0,method=lora,train_examples=16",
        "model=llama,seed=0,train_examples=16",
        "model=llama,shots=0",
        "model=llama,shots=4,shot_seed=0",
    }
    assert "all 4 points finished" in report
    assert report.count("| prompting |") == 2  # zero- and 4-shot rows, 0 trainable params
    assert (tmp_path / "plots" / "metric_vs_examples.png").stat().st_size > 10_000
    trained = json.loads(
        (tmp_path / "runs" / "seed=0,method=lora,train_examples=16" / "results.json").read_text()
    )
    assert trained["data"]["train"]["examples"] == 16 and trained["step"] == 2
    assert trained["test"]["examples"] == 16  # the study's 512, cut by the later flag


def test_layers_ner_study(tmp_path, tiny):
    report, records = run_study(
        "layers_ner", tmp_path,
        MODEL=str(tiny["bert"]), SEEDS="0", LAYERS="last,-2",
        EXTRA=f"--config.data.name={tiny['ner']} --config.data.label_names=() "
        f"--config.data.max_length=32 {TINY_RUN}",
    )  # fmt: skip
    assert sorted(r["name"] for r in records) == [
        "seed=0,layers=-2",
        "seed=0,layers=last",
        "seed=0,method=full",
    ]
    assert {r["metric"] for r in records} == {"entity_f1"} and "all 3 points finished" in report


def test_methods_families_study(tmp_path, tiny):
    models = tmp_path / "models"
    report, records = run_study(
        "methods_families", tmp_path,
        MODELS=str(models), FAMILY_MODELS=f"{tiny['bert']},{models}/random-t5", METHODS="lora",
        EXTRA=f"--config.data.name={tiny['sentiment']} {TINY_RUN}",
    )  # fmt: skip
    assert {r["name"] for r in records} == {"model=bert,method=lora", "model=random-t5,method=lora"}
    t5 = json.loads((models / "random-t5" / "config.json").read_text())
    assert t5["model_type"] == "t5" and t5["d_model"] == 128
    assert "all 2 points finished" in report
