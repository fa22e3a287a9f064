"""A workdir as a model source: continued pre-training, then fine-tuning from it. The
exported backbone is exactly what trained (LoRA merged), and unexportable methods are
refused by name."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from ftjax.core import partition
from ftjax.interop import peft_format
from ftjax.interop.hf_classes import ExportError
from ftjax.models import from_pretrained
from ftjax.training import loop
from ftjax.training.backbone import STAMP, export_backbone, is_run
from tests.helpers import synthetic
from tests.helpers.runs import tiny_run_config
from tests.helpers.tiny import write_splits


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    splits = synthetic.splits_of(
        synthetic.sentiment_rows, sizes={"train": 64, "validation": 16, "test": 16}
    )
    return write_splits(tmp_path_factory.mktemp("data"), splits)


def trained(workdir) -> dict:
    """The run's latest params (trainable and frozen), flat, on the host."""
    _, state, _, _ = loop.restore_run(workdir)
    every = {**state.trainable, **state.frozen}
    return {p: np.asarray(jax.device_get(v)) for p, v in every.items()}


@pytest.mark.slow
def test_masked_lm_run_is_the_source_of_a_fine_tuning_run(tmp_path, shallow_checkpoints, data):
    cpt = tiny_run_config("lm", shallow_checkpoints["bert"], data, train__epochs=1)
    loop.run(cpt, tmp_path / "mlm")
    assert is_run(tmp_path / "mlm") and not is_run(shallow_checkpoints["bert"])
    model, params = from_pretrained(tmp_path / "mlm")
    assert model.config.with_mlm_head  # the head the run initialised and trained
    loaded, expected = partition.flatten(params), trained(tmp_path / "mlm")
    assert loaded.keys() == expected.keys()
    assert all(np.array_equal(loaded[p], expected[p]) for p in loaded)
    _, original = from_pretrained(shallow_checkpoints["bert"])
    path = "encoder/layer_0/attention/query/kernel"
    assert not np.array_equal(partition.flatten(original)[path], loaded[path])
    stamp = json.loads((tmp_path / "mlm" / "export" / "step_4" / STAMP).read_text())
    assert stamp["step"] == 4 and stamp["source"] == str(shallow_checkpoints["bert"])

    tune = tiny_run_config("sentiment", tmp_path / "mlm", data, method="lora", train__epochs=1)
    results = loop.run(tune, tmp_path / "tuned")
    assert results["test"]["examples"] == 16


def test_lora_run_exports_merged_kernels(tmp_path, shallow_checkpoints, data):
    config = tiny_run_config("lm", shallow_checkpoints["gpt2"], data, "lora", train__epochs=1)
    loop.run(config, tmp_path / "clm")
    folder = export_backbone(tmp_path / "clm")
    model, params = from_pretrained(folder)
    assert not model.config.peft.lora_rank
    run = trained(tmp_path / "clm")
    scale = 16 / 8  # alpha / rank, the defaults
    base = "decoder/layer_0/attention/query/"
    lora = run[base + "lora_a"] @ run[base + "lora_b"]
    assert np.abs(lora).max() > 0  # it trained
    merged = partition.flatten(params)[base + "kernel"]
    np.testing.assert_allclose(merged, run[base + "kernel"] + lora * scale, atol=1e-6)
    assert export_backbone(tmp_path / "clm") == folder  # exported once, then reused

    refused = tmp_path / "prefix"
    shutil.copytree(tmp_path / "clm", refused, ignore=shutil.ignore_patterns("export"))
    saved = json.loads((refused / "config.json").read_text())
    saved["method"]["name"] = "prefix"
    (refused / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ExportError, match="method prefix adds parameters"):
        from_pretrained(refused)


def test_t5_span_corruption_run_is_a_model_source(tmp_path, shallow_checkpoints, data):
    config = tiny_run_config(
        "lm", shallow_checkpoints["t5"], data, train__epochs=1, task__sentinel_format="[unused{}]"
    )
    results = loop.run(config, tmp_path / "t5")
    assert np.isfinite(results["test"]["perplexity"]) and results["test"]["tokens"] > 0
    model, params = from_pretrained(tmp_path / "t5")
    expected = trained(tmp_path / "t5")
    loaded = partition.flatten(params)
    assert all(np.array_equal(loaded[p], expected[p]) for p in expected)
    assert type(model).__name__ == "T5Model"


# ---------------------------------------------------------------------------- formats


def test_save_pretrained_refuses_to_drop_trained_params(tmp_path):
    """It used to log "not saved" and write the base model; now it names what would be
    lost and the export that keeps it, unless the caller drops it by name."""
    from ftjax import methods
    from ftjax.models import hub, init_params
    from tests.helpers.tiny import tiny_model

    base = tiny_model("bert")
    method = methods.resolve("lora", base, {"rank": 2})
    model, params = methods.apply(method, base, init_params(base, 0))
    with pytest.raises(hub.UnsavedParamsError, match=r"(?s)LoRA factors.*--format peft"):
        hub.save_pretrained(model, params, tmp_path / "lora")
    assert not (tmp_path / "lora").exists()
    merged_model, merged, _ = methods.merge_lora(model, params)
    head = {"head": {"dense": {"kernel": np.ones((16, 2)), "bias": np.zeros(2)}}}
    with pytest.raises(hub.UnsavedParamsError, match=r"(?s)the task head.*head/dense/kernel"):
        hub.save_pretrained(merged_model, {**merged, **head}, tmp_path / "head")
    hub.save_pretrained(merged_model, {**merged, **head}, tmp_path / "head", drop=("head/.*",))
    assert (tmp_path / "head" / "model.safetensors").is_file()
    prompt = methods.resolve("prompt", base, {"length": 2})
    model, params = methods.apply(prompt, base, init_params(base, 0))
    with pytest.raises(hub.UnsavedParamsError, match="a soft prompt.*prompt/embedding"):
        hub.save_pretrained(model, params, tmp_path / "prompt")


def _inputs(tokenizer):
    encoded = tokenizer(["a fine, moving film", "dull"], padding=True, return_tensors="np")
    return {k: np.asarray(v) for k, v in encoded.items()}


def test_run_exports_in_every_format_and_each_loads(tmp_path, shallow_checkpoints, data):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from ftjax.evaluate import evaluate_untrained
    from ftjax.export import main
    from ftjax.interop import native_format

    config = tiny_run_config(
        "sentiment", shallow_checkpoints["bert"], data, "lora", train__epochs=1
    )
    config.task.pooling = "pooler"  # what BertForSequenceClassification classifies
    loop.run(config, tmp_path / "run")
    exp, state, _, _ = loop.restore_run(tmp_path / "run")
    params = partition.unflatten(trained(tmp_path / "run"))
    batch = _inputs(exp.task.tokenizer)
    ours = np.asarray(exp.task.outputs_of(params, batch))
    torch_batch = {k: torch.tensor(v) for k, v in batch.items()}

    assert (
        main(["--workdir", str(tmp_path / "run"), "--format", "peft", "--out", str(tmp_path / "p")])
        == 0
    )
    reference = transformers.BertForSequenceClassification.from_pretrained(
        shallow_checkpoints["bert"], num_labels=2
    ).eval()
    adapted = peft.PeftModel.from_pretrained(reference, tmp_path / "p").eval()
    with torch.no_grad():
        assert np.abs(adapted(**torch_batch).logits.numpy() - ours).max() <= 1e-4
    # ... and back: the adapter, its head included, starts an evaluation of the same run
    imported = tiny_run_config("sentiment", shallow_checkpoints["bert"], data, "lora")
    imported.task.pooling = "pooler"
    imported.method.init_from = str(tmp_path / "p")
    tested = json.loads((tmp_path / "run" / "results.json").read_text())["test"]
    again = evaluate_untrained(imported, tmp_path / "imported")["test"]
    assert again["accuracy"] == tested["accuracy"]
    assert again["loss"] == pytest.approx(tested["loss"], rel=1e-5)

    assert (
        main(["--workdir", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "h")])
        == 0
    )
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "h").eval()
    with torch.no_grad():
        assert np.abs(merged(**torch_batch).logits.numpy() - ours).max() <= 1e-4
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "h").vocab_size > 0

    assert (
        main(
            ["--workdir", str(tmp_path / "run"), "--format", "ftjax", "--out", str(tmp_path / "f")]
        )
        == 0
    )
    model, loaded, run = native_format.load(tmp_path / "f")
    assert model.config == exp.task.model.config and run["method"]["name"] == "lora"
    flat, expected = partition.flatten(loaded), trained(tmp_path / "run")
    assert flat.keys() == expected.keys()
    assert all(np.array_equal(flat[p], expected[p]) for p in flat)
    why = json.loads((tmp_path / "f" / native_format.MODEL_FILE).read_text())["why"]
    assert why.startswith("written as asked")


def test_refusals_name_the_format_that_works(tmp_path, shallow_checkpoints, data, capsys):
    from ftjax.evaluate import evaluate_untrained
    from ftjax.export import main
    from ftjax.interop import native_format

    config = tiny_run_config("lm", shallow_checkpoints["gpt2"], data, "prefix", train__epochs=1)
    config.method.length = 2
    loop.run(config, tmp_path / "prefix")
    assert main(["--workdir", str(tmp_path / "prefix"), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "--format ftjax" in err, err
    # PEFT holds a GPT-2 prefix (a key/value cache, positions as ftjax's): it exports.
    assert main(["--workdir", str(tmp_path / "prefix"), "--format", "peft"]) == 0
    adapter = tmp_path / "prefix" / "export" / "peft_step_4"
    assert peft_format.read_config(adapter)["peft_type"] == "PREFIX_TUNING"
    imported = tiny_run_config("lm", shallow_checkpoints["gpt2"], data, "prefix")
    imported.method.init_from = str(adapter)
    tested = json.loads((tmp_path / "prefix" / "results.json").read_text())["test"]
    again = evaluate_untrained(imported, tmp_path / "imported")["test"]
    assert again["perplexity"] == pytest.approx(tested["perplexity"], rel=1e-5)
    out = tmp_path / "prefix" / "export" / "ftjax_step_4"
    assert main(["--workdir", str(tmp_path / "prefix"), "--format", "ftjax"]) == 0
    why = json.loads((out / native_format.MODEL_FILE).read_text())["why"]
    assert "--format hf refuses: method prefix" in why
    _, loaded, _ = native_format.load(out)
    expected = trained(tmp_path / "prefix")
    assert all(np.array_equal(partition.flatten(loaded)[p], expected[p]) for p in expected)


def test_peft_adapter_starts_a_run(tmp_path, shallow_checkpoints, data):
    """method.init_from: an exported LM adapter is the starting point of an evaluation."""
    from ftjax.evaluate import evaluate_untrained
    from ftjax.export import export_run

    config = tiny_run_config("lm", shallow_checkpoints["gpt2"], data, "lora", train__epochs=1)
    results = loop.run(config, tmp_path / "clm")
    adapter = export_run(tmp_path / "clm", "peft", tmp_path / "adapter")
    again = tiny_run_config("lm", shallow_checkpoints["gpt2"], data, "lora")
    again.method.init_from = str(adapter)
    evaluated = evaluate_untrained(again, tmp_path / "eval")["test"]
    assert evaluated["perplexity"] == pytest.approx(results["test"]["perplexity"], rel=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_classifier_has_transformers_bias_free_score_and_exports(
    family, tmp_path, shallow_checkpoints, data
):
    """A decoder's pooled head is transformers' `score`: one dense layer without bias, on
    the last real token. A LoRA run of it exports to --format hf and --format peft, and
    transformers (+ PEFT) compute the run's logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from ftjax.export import main

    config = tiny_run_config(
        "sentiment", shallow_checkpoints[family], data, "lora", train__epochs=1
    )
    config.task.pooling = "last"
    loop.run(config, tmp_path / "run")
    exp, _, _, _ = loop.restore_run(tmp_path / "run")
    flat = trained(tmp_path / "run")
    assert {p for p in flat if p.startswith("head/")} == {"head/dense/kernel"}
    params = partition.unflatten(flat)
    batch = {k: v for k, v in _inputs(exp.task.tokenizer).items() if k != "token_type_ids"}
    assert (batch["attention_mask"] == 0).any()  # the last real token is found past padding
    ours = np.asarray(exp.task.outputs_of(params, batch))
    torch_batch = {k: torch.tensor(v) for k, v in batch.items()}

    for fmt in ("hf", "peft"):
        assert (
            main(
                ["--workdir", str(tmp_path / "run"), "--format", fmt, "--out", str(tmp_path / fmt)]
            )
            == 0
        )
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert type(merged).__name__.endswith("ForSequenceClassification")
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(
        shallow_checkpoints[family], num_labels=2, pad_token_id=exp.task.tokenizer.pad_token_id
    ).eval()
    adapted = peft.PeftModel.from_pretrained(reference, tmp_path / "peft").eval()
    with torch.no_grad():
        for model in (merged, adapted):
            assert np.abs(model(**torch_batch).logits.numpy() - ours).max() <= 1e-4


def test_default_mean_pooled_run_exports_to_peft_with_a_loader_that_computes_it(
    tmp_path, shallow_checkpoints, data
):
    """The default config's head (mean of the last layer, one dense layer) has no
    transformers class: --format peft writes an AutoModel adapter, the head and a README
    whose code, run as written, gives the run's logits with PEFT + transformers."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from ftjax.export import main
    from ftjax.interop import pooled_head

    config = tiny_run_config(
        "sentiment", shallow_checkpoints["bert"], data, "lora", train__epochs=1
    )
    loop.run(config, tmp_path / "run")
    exp, _, _, _ = loop.restore_run(tmp_path / "run")
    assert exp.task.spec.pooling == "mean"  # the default's ("auto" on BERT)
    params = partition.unflatten(trained(tmp_path / "run"))
    texts = ["a fine, moving film", "dull"]
    ours = np.asarray(exp.task.outputs_of(params, _inputs(exp.task.tokenizer)))
    out = tmp_path / "peft"
    assert main(["--workdir", str(tmp_path / "run"), "--format", "peft", "--out", str(out)]) == 0
    assert peft_format.read_config(out)["task_type"] == "FEATURE_EXTRACTION"
    namespace: dict = {}
    exec(pooled_head.loader_code(out), namespace)  # the README's code, as a user runs it
    theirs = namespace["logits"](texts).numpy()
    assert np.abs(theirs - ours).max() <= 1e-4
    assert np.abs(ours).max() > 1e-3  # a trained head, not zeros


def test_a_checkpoint_of_other_params_and_a_workdir_without_the_trainer_are_named(
    tmp_path, shallow_checkpoints, data, monkeypatch
):
    """A checkpoint whose trained params this code does not build (a GPT-2 head with
    the bias older versions gave it) is refused naming them, not by orbax's tree error;
    and the models layer alone, asked for a workdir, says what exports it."""
    import subprocess
    import sys

    from ftjax.tasks.classification import Head, PooledTask
    from ftjax.training.checkpoints import ResumeError

    config = tiny_run_config(
        "sentiment", shallow_checkpoints["gpt2"], data, "lora", train__max_steps=2
    )
    loop.run(config, tmp_path / "run")
    monkeypatch.setattr(
        PooledTask, "head", lambda self: Head(self.outputs, self.config.task.head_dropout, True)
    )
    with pytest.raises(ResumeError, match=r"lacks some it does \(\['head/dense/bias'\]\)"):
        loop.restore_run(tmp_path / "run")
    code = f"from ftjax.models import hub; hub.resolve_checkpoint_dir({str(tmp_path / 'run')!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1 and "is an ftjax run's workdir" in proc.stderr, proc.stderr
