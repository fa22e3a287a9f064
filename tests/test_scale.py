"""Scale features: per-layer remat, scanned layer stacks, the dtype policy.

Remat and scan must change nothing a run computes (losses, gradients, which params
train, checkpoints, exports); scanned stacks keep the per-layer paths everywhere outside
the compiled steps.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import load_file

from ftjax import export
from ftjax.core import partition
from ftjax.models import from_pretrained, init_params, save_pretrained, stacking
from ftjax.models.base import PeftConfig
from ftjax.models.hub import stack_depths
from ftjax.training import loop
from ftjax.training.experiment import build
from ftjax.training.optim import with_state_dtype
from ftjax.training.state import canonical_params, initial_state
from ftjax.training.steps import Steps
from tests.helpers.tiny import make_checkpoint, make_dataset, tiny_config, tiny_model

FAMILIES = ("bert", "gpt2", "llama", "t5")
PEFTS = {
    "plain": PeftConfig(),
    # LoRA on the second layer only: a scanned stack holds inert zeros in the first.
    "lora": PeftConfig(lora_rank=2, lora_targets=r".*layer_1/(attention|cross_attention)/query"),
    "prefix": PeftConfig(prefix_length=3),
}
IDS = jnp.array([[5, 6, 7, 8, 9, 0], [3, 4, 5, 0, 0, 0]])


def variant(model, **fields):
    return type(model)(dataclasses.replace(model.config, **fields))


def loss_and_grads(model, flat_canonical: dict):
    """Loss and canonical gradients of `model` (scanned or not) in training mode."""
    stacks = stack_depths(model)
    params = partition.unflatten(stacking.to_storage(model, stacks, flat_canonical))
    extra = {"decoder_input_ids": IDS[:, :4]} if "T5" in type(model).__name__ else {}

    def loss(p):
        out = model.apply(
            {"params": p}, IDS, (IDS > 0).astype(jnp.int32), **extra,
            deterministic=False, rngs={"dropout": jax.random.key(1)},
        )  # fmt: skip
        return jnp.mean(jnp.square(out.last_hidden_state))

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return float(value), stacking.to_canonical(model, stacks, partition.flatten(grads))


def assert_same(got, want, tol=1e-6):
    (value, grads), (ref_value, ref_grads) = got, want
    assert abs(value - ref_value) <= tol
    assert set(grads) == set(ref_grads)
    for path, g in ref_grads.items():
        np.testing.assert_allclose(grads[path], g, atol=tol, rtol=0, err_msg=path)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_remat_and_scan_give_the_same_losses_and_gradients(family):
    for name, peft in PEFTS.items():
        base = variant(tiny_model(family), peft=peft)
        flat = partition.flatten(init_params(base, 0))
        if name == "plain":
            # Dropout on: remat replays the same masks. The policies are the model's own
            # (models.layers.REMAT_POLICIES), not the family's: dots_no_batch on one.
            reference = loss_and_grads(base, flat)
            for policy in ("full", "dots_no_batch") if family == "gpt2" else ("full",):
                assert_same(loss_and_grads(variant(base, remat=policy), flat), reference)
        # A scan draws other dropout masks (its rng is split per layer), so it is compared
        # without dropout; with remat inside the scanned body, and (plain) without.
        rates = {f.name: 0.0 for f in dataclasses.fields(base.config) if f.name.endswith("dropout")}
        still = variant(base, **rates)
        reference = loss_and_grads(still, flat)
        for policy in ("none", "full") if name == "plain" else ("full",):
            scanned = variant(still, scan_layers=True, remat=policy)
            assert_same(loss_and_grads(scanned, flat), reference), (name, policy)
        if name == "lora":  # only the targeted layer holds factors, scanned or not
            assert not [p for p in flat if "lora" in p and "layer_0/" in p]


def test_scanned_params_are_stacked_and_round_trip_bit_exactly():
    model = variant(tiny_model("llama"), scan_layers=True, peft=PEFTS["lora"])
    flat = partition.flatten(init_params(model, 0))
    stacks = stack_depths(model)
    stored = stacking.to_storage(model, stacks, flat)
    kernel = stored["decoder/layers/attention/query/kernel"]
    assert kernel.shape[0] == 2 and "decoder/layer_0/attention/query/kernel" not in stored
    assert not np.any(stored["decoder/layers/attention/query/lora_a"][0])  # the inert hole
    back = stacking.to_canonical(model, stacks, stored)
    assert set(back) == set(flat)
    for path, leaf in flat.items():
        np.testing.assert_array_equal(back[path], leaf)
    axes = partition.flatten(jax.tree.map(tuple, stacking_axes(model)))
    assert axes["decoder/layers/attention/query/kernel"][0] == "layers"


def stacking_axes(model):
    from ftjax.models import param_axes

    return param_axes(model)


def test_scanned_model_loads_and_saves_hf_checkpoints_bit_exactly(tmp_path):
    source = make_checkpoint(tmp_path / "t5", "t5")
    model, params = from_pretrained(source, scan_layers=True)
    assert model.config.scan_layers
    stacks = stack_depths(model)
    stored = stacking.to_storage(model, stacks, partition.flatten(params))
    back = partition.unflatten(stacking.to_canonical(model, stacks, stored))
    save_pretrained(model, back, tmp_path / "saved")
    want, got = (
        load_file(source / "model.safetensors"),
        load_file(tmp_path / "saved" / "model.safetensors"),
    )
    assert set(got) == set(want)
    for name, tensor in want.items():
        np.testing.assert_array_equal(got[name], tensor, err_msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny runs unrolled and scanned (with remat): selective top-1 and LoRA on
    the second layer only, so a regex names one layer of a stacked leaf."""
    base = tmp_path_factory.mktemp("scan")
    model, data = make_checkpoint(base / "m", "bert"), make_dataset(base / "d")
    out = {}
    one_layer = {"targets": r"encoder/layer_1/attention/(query|value)"}
    for method, options in (("top_k", {"k": 1}), ("lora", one_layer)):
        for scanned in (False, True):
            config = tiny_config(model, data, method=method, epochs=1, checkpoint_every=4)
            if method == "lora":  # the classifier BertForSequenceClassification computes
                config.task.pooling = "pooler"
            config.model.update(
                dropout=0.0, scan_layers=scanned, remat="full" if scanned else "none"
            )
            config.method.update(options)
            workdir = base / f"{method}_{scanned}"
            results = loop.run(config, workdir)
            losses = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
            losses = [
                r["loss"] for r in losses if r.get("split", "train") == "train" and "loss" in r
            ]
            out[method, scanned] = workdir, results, losses, config
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["top_k", "lora"])
def test_a_scanned_run_trains_what_the_unrolled_one_trains(runs, method):
    _, plain, plain_losses, _ = runs[method, False]
    workdir, scanned, scanned_losses, config = runs[method, True]
    np.testing.assert_allclose(scanned_losses, plain_losses, rtol=1e-5)
    assert scanned["test"]["accuracy"] == plain["test"]["accuracy"]
    exp, state, _, _ = loop.restore_run(workdir)
    trained = partition.flatten(canonical_params(exp, state))
    start = partition.flatten(build(config).params)
    moved = {p for p in start if not np.array_equal(trained[p], start[p])}
    in_layers = {p.split("/")[1] for p in moved if p.startswith("encoder/")}
    assert in_layers == {"layer_1"}, sorted(moved)  # layer 0 stays as loaded


@pytest.mark.slow
def test_a_scanned_lora_run_exports_to_peft_as_before(runs, tmp_path):
    files = {}
    for scanned in (False, True):
        workdir = runs["lora", scanned][0]
        out = export.export_run(workdir, "peft", tmp_path / f"peft_{scanned}")
        files[scanned] = load_file(out / "adapter_model.safetensors")
        config = json.loads((out / "adapter_config.json").read_text())
        files[scanned, "config"] = {
            k: v for k, v in config.items() if k != "base_model_name_or_path"
        }
    assert files[True, "config"] == files[False, "config"]
    assert set(files[True]) == set(files[False])
    for name, tensor in files[False].items():
        np.testing.assert_allclose(files[True][name], tensor, atol=1e-5, err_msg=name)


def test_frozen_params_stored_as_param_dtype_and_the_table_says_so(tmp_path):
    model, data = make_checkpoint(tmp_path / "m", "gpt2"), make_dataset(tmp_path / "d")
    config = tiny_config(model, data, method="lora", epochs=1)
    config.model.update(param_dtype="bfloat16", scan_layers=True)
    config.optimizer.state_dtype = "bfloat16"
    exp = build(config)
    state, _ = initial_state(exp)
    assert {v.dtype for v in state.frozen.values()} == {jnp.dtype("bfloat16")}
    assert {v.dtype for v in state.trainable.values()} == {jnp.dtype("float32")}
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
    assert moments and {x.dtype for x in moments} == {jnp.dtype("bfloat16")}
    assert "frozen bfloat16" in exp.table and "optimizer state bfloat16" in exp.table


def test_optimizer_state_dtype_changes_storage_not_the_update():
    params = {"w": jnp.linspace(-1.0, 1.0, 64)}
    grads = {"w": jnp.cos(jnp.arange(64.0))}
    plain, halved = optax.adamw(1e-2), with_state_dtype(optax.adamw(1e-2), "bfloat16")
    state, small = plain.init(params), halved.init(params)
    assert small[0].mu["w"].dtype == jnp.bfloat16
    for _ in range(3):
        want, state = plain.update(grads, state, params)
        got, small = halved.update(grads, small, params)
    np.testing.assert_allclose(got["w"], want["w"], rtol=2e-2)


def test_a_scanned_steps_flops_count_every_layer(tmp_path):
    """MFU's numerator: XLA's cost analysis counts a loop's body once, so a scanned run
    counts its step through the unrolled twin, the same FLOPs as the unrolled run."""
    model, data = make_checkpoint(tmp_path / "m", "gpt2"), make_dataset(tmp_path / "d")
    flops = {}
    for scanned in (False, True):
        config = tiny_config(model, data, method="lora", epochs=1)
        config.model.scan_layers = scanned
        exp = build(config)
        state, shardings = initial_state(exp)
        batch = next(iter(exp.loader.train_batches(0, 0)))
        flops[scanned] = Steps(exp, shardings).step_flops(state, batch, jax.random.key(0))
    assert flops[False] > 0
    assert flops[True] == pytest.approx(flops[False], rel=1e-9)


def test_remat_lowers_the_compiled_steps_temporary_memory():
    """XLA's own account: a scanned 4-layer model's gradient keeps less with remat. (On
    XLA:CPU an unrolled stack's remat is undone: the optimization barriers that keep
    the recomputation apart do not survive its pipeline, benchmarks/RESULTS.md.)"""
    base = tiny_model("gpt2", num_layers=4, hidden_size=64, intermediate_size=256, vocab_size=64)
    params = partition.flatten(init_params(base, 0))
    ids = jnp.zeros((8, 128), jnp.int32)

    def temp_bytes(model):
        stored = stacking.to_storage(model, stack_depths(model), params)

        def loss(p):
            out = model.apply(
                {"params": p}, ids, deterministic=False, rngs={"dropout": jax.random.key(0)}
            )
            return jnp.mean(jnp.square(out.last_hidden_state))

        compiled = jax.jit(jax.grad(loss)).lower(partition.unflatten(stored)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    scanned = variant(base, scan_layers=True)
    assert temp_bytes(variant(scanned, remat="full")) < 0.5 * temp_bytes(scanned)


def test_loading_shardings_of_a_scanned_model_are_per_layer():
    """The sharded loader fills canonical params: a scanned model asks for the same."""
    from ftjax.training import sharding

    model = tiny_model("llama")
    mesh = sharding.make_mesh({"data": 1})
    want = sharding.model_shardings(mesh)(model)
    assert sharding.model_shardings(mesh)(variant(model, scan_layers=True)) == want
    assert "decoder/layer_1/attention/query/kernel" in want


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_label_scores_of_a_scanned_model_equal_the_unrolled_ones(family):
    """The shared context's cache is broadcast and repeated along its rows, which a
    scanned stack keeps behind the layer axis."""
    from ftjax.models import likelihood

    base = tiny_model(family)
    params = init_params(base, 0)
    scanned = variant(base, scan_layers=True)
    stored = partition.unflatten(
        stacking.to_storage(scanned, stack_depths(scanned), partition.flatten(params))
    )
    context = jnp.array([5, 6, 7])
    query, query_mask = IDS[:, :5], (IDS[:, :5] > 0).astype(jnp.int32)
    choices, choice_mask = jnp.array([[8, 9], [10, 0]]), jnp.array([[1, 1], [1, 0]])
    scores = [
        likelihood.causal_choices(m, p, context, query, query_mask, choices, choice_mask)
        for m, p in ((base, params), (scanned, stored))
    ]
    np.testing.assert_allclose(scores[1], scores[0], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_matmul_precision_differentiates_every_family_through_its_lm_head(family):
    """model.matmul_precision=bfloat16 compiles and runs forward and backward on every
    family, tied LM heads included (XLA:CPU has no bf16 dot for a transposed operand),
    and moves the loss and gradients by bf16 rounding, no more."""
    model = tiny_model(family)
    params = init_params(model, 0)
    extra = {"decoder_input_ids": IDS[:, :4]} if family == "t5" else {}

    def loss(p):
        out = model.apply({"params": p}, IDS, (IDS > 0).astype(jnp.int32), **extra)
        scores = out.logits if out.logits is not None else out.last_hidden_state
        return jnp.mean(jnp.square(scores))

    exact = jax.jit(jax.value_and_grad(loss))(params)
    with jax.default_matmul_precision("bfloat16"):
        rounded = jax.jit(jax.value_and_grad(loss))(params)
    assert float(rounded[0]) != float(exact[0])
    np.testing.assert_allclose(float(rounded[0]), float(exact[0]), rtol=2e-2)
    # the whole gradient (some entries are cancellations near zero, rounded to noise)
    got, want = (np.asarray(jax.flatten_util.ravel_pytree(g[1])[0]) for g in (rounded, exact))
    cosine = got @ want / (np.linalg.norm(got) * np.linalg.norm(want))
    assert cosine > 0.999 and abs(np.linalg.norm(got) / np.linalg.norm(want) - 1) < 0.02
