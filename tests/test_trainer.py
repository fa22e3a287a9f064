"""The trainer end to end on a tiny model and a small slice of the real data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.flatten_util
import numpy as np
import pytest

from ftjax.evaluate import evaluate, evaluate_untrained
from ftjax.methods import MethodError
from ftjax.training import checkpoints, loop
from ftjax.training.config import ConfigError, compiler_options
from ftjax.training.experiment import build, run_key
from ftjax.training.state import initial_state
from ftjax.training.steps import Steps
from tests.helpers import xla
from tests.helpers.tiny import make_checkpoint, make_dataset, tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    return make_checkpoint(base / "model"), make_dataset(base / "data")


def config_for(tiny, method="lora", **train):
    # rbg: fast to compile here, and these tests compare runs of one layout only.
    return tiny_config(*tiny, method, prng_impl="rbg", **train)


def train_losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


@pytest.mark.slow
def test_sharded_meshes_match_one_device(tiny):
    """data=8 and data=2,fsdp=2,tensor=2 give one device's losses; params shard by the rules.
    (LoRA skips data=8: pure data parallelism does not depend on the method.)"""
    env = dict(os.environ, XLA_FLAGS=xla.flags(device_count=8), PYTHONPATH=str(ROOT))
    for method, meshes in (("full", ("1", "data8", "2x2x2")), ("lora", ("1", "2x2x2"))):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.helpers.sharded_losses",
                str(tiny[0]),
                str(tiny[1]),
                method,
                *meshes,
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        one = np.array(result["1"]["losses"])
        for mesh in meshes[1:]:
            np.testing.assert_allclose(result[mesh]["losses"], one, rtol=1e-5, err_msg=mesh)
            # MFU's FLOPs are the whole step's, whatever the mesh (not one device's share)
            assert result[mesh]["flops"] == result["1"]["flops"] > 0, mesh
        specs = result["2x2x2"]["specs"]
        assert specs["encoder/layer_0/attention/query/kernel"] == ["fsdp", "tensor"]
        assert specs["encoder/layer_0/mlp/output/kernel"] == ["tensor", "fsdp"]
        assert specs["embeddings/word_embeddings/embedding"] == ["tensor", "fsdp"]
        assert specs["embeddings/layer_norm/scale"] == [None]
        assert specs["head/dense/kernel"] == ["fsdp", None]
        if method == "lora":
            assert specs["encoder/layer_1/attention/value/lora_a"] == ["fsdp", None]


@pytest.mark.slow
def test_interrupt_then_resume_reproduces_the_run(tiny, tmp_path):
    config = config_for(tiny, epochs=2, checkpoint_every=1)
    straight = loop.run(config, tmp_path / "straight")
    expected = train_losses(tmp_path / "straight")
    assert len(expected) == 16

    workdir = tmp_path / "interrupted"

    def send_sigterm_after_three_steps():
        while not (workdir / "metrics.jsonl").exists() or len(train_losses(workdir)) < 3:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=send_sigterm_after_three_steps)
    killer.start()
    first = loop.run(config, workdir)
    killer.join()
    assert first["stopped"] and 3 <= first["step"] < 16
    mngr = checkpoints.manager(workdir / "checkpoints", 2, "accuracy")
    assert mngr.latest_step() == first["step"]  # a restorable checkpoint of the last step
    mngr.close()
    resumed = loop.run(config, workdir)
    got = train_losses(workdir)
    assert sorted(got) == sorted(expected)
    for step, loss in expected.items():
        assert abs(got[step] - loss) <= 1e-6 * abs(loss), step
    assert resumed["test"] == straight["test"]

    again = evaluate(workdir)  # ftjax.evaluate reproduces the printed test metric
    assert again["test"] == straight["test"]


def test_validations_are_spread_over_the_run_not_one_per_epoch(tiny, tmp_path):
    """Epochs of one batch on a 6-step budget: `train.evaluations=3` validates at steps
    2, 4 and 6 (per epoch, it would have been all 6)."""
    data = make_dataset(tmp_path / "d", (("train", 8), ("validation", 8), ("test", 8)))
    config = tiny_config(tiny[0], data, "lora", prng_impl="rbg", max_steps=6, evaluations=3)
    loop.run(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2, 4, 6]
    assert loop.validation_interval(7, 2) == 4 and loop.validation_interval(3, 5) == 1


def test_untrained_evaluation_reads_only_the_test_split(tiny, tmp_path):
    """Zero-shot evaluation equals testing a full run's initial state, without a train split."""
    config = config_for(tiny, epochs=1)
    exp = build(config)
    state, shardings = initial_state(exp)
    learnt_nothing = Steps(exp, shardings).evaluate(state, "test")
    test_only = tmp_path / "test_only"
    test_only.mkdir()
    shutil.copy(Path(tiny[1]) / "test.jsonl", test_only)
    config.data.name = str(test_only)
    untrained = evaluate_untrained(config, tmp_path / "zero")
    assert untrained["step"] == 0 and untrained["test"] == learnt_nothing
    assert json.loads((tmp_path / "zero" / "eval.json").read_text())["test"] == learnt_nothing


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    config = config_for(tiny, method="full", checkpoint_every=1)
    config.optimizer.update(learning_rate=1e25, grad_clip=0.0, warmup_ratio=0.0)
    with pytest.raises(loop.TrainingDiverged, match="loss is (nan|inf)"):
        loop.run(config, tmp_path / "w")
    mngr = checkpoints.manager(tmp_path / "w" / "checkpoints", 2, "accuracy")
    last_good = mngr.latest_step()
    assert last_good is not None
    exp = build(config)
    state, _ = initial_state(exp)
    state, _ = checkpoints.restore(mngr, state)
    assert int(state.step) == last_good
    assert all(np.isfinite(np.asarray(v)).all() for v in state.trainable.values())
    mngr.close()


def test_gradient_accumulation_matches_one_big_batch(tiny, tmp_path):
    """A whole epoch of 62 rows in batches of 8: the last batch holds 6 rows, so with two
    micro-batches of 4 one of them is partly padding and must weigh 2 rows, not 4."""
    data = make_dataset(tmp_path / "d", (("train", 62), ("validation", 8), ("test", 8)))

    def epoch_losses(accum):
        config = tiny_config(tiny[0], data, "full", prng_impl="rbg")
        config.model.dropout = 0.0
        config.task.head_dropout = 0.0
        config.optimizer.grad_accum = accum
        exp = build(config)
        state, shardings = initial_state(exp)
        steps = Steps(exp, shardings)
        losses, real_rows = [], []
        for i, batch in enumerate(exp.loader.train_batches(0, 0)):
            real_rows.append(int(np.sum(batch["example_mask"])))
            state, metrics = steps.train(state, batch, jax.random.PRNGKey(i))
            losses.append(float(metrics["loss"]))
        assert sorted(real_rows) == [6] + [8] * 7
        return losses

    np.testing.assert_allclose(epoch_losses(2), epoch_losses(1), rtol=2e-5)


def test_config_errors_name_the_field(tiny):
    def build_with(**changes):
        config = config_for(tiny)
        for dotted, value in changes.items():
            section, field = dotted.split("__")
            setattr(config[section], field, value)
        return build(config)

    with pytest.raises(ConfigError, match="config.model.dtype='float16'"):
        build_with(model__dtype="float16")
    with pytest.raises(MethodError, match="rank=64 exceeds"):
        build_with(method__rank=64)
    with pytest.raises(ConfigError, match="grad_accum=3"):
        build_with(optimizer__grad_accum=3)
    with pytest.raises(ConfigError, match=r"config.data.eval_examples=-1 must be >= 0"):
        build_with(data__eval_examples=-1)
    with pytest.raises(ConfigError, match=r"config.data.test_examples=-2 must be >= 0"):
        build_with(data__test_examples=-2)
    for change, message in (
        ({"task__pooling": "maxx"}, "config.task.pooling='maxx'; choose from"),
        ({"task__layers": "top3"}, "config.task.layers='top3'; choose from"),
        ({"task__head_dropout": -0.5}, r"config.task.head_dropout=-0.5 must be in \[0, 1\)"),
        ({"model__dropout": 2.0}, r"config.model.dropout=2.0 must be in \[0, 1\) \(or -1"),
        ({"optimizer__name": "adamx"}, "config.optimizer.name='adamx'; choose from adamw"),
        ({"optimizer__schedule": "cosin"}, "config.optimizer.schedule='cosin'; choose"),
        ({"optimizer__warmup_ratio": 1.5}, "config.optimizer.warmup_ratio=1.5"),
        ({"train__prng_impl": "foo"}, "config.train.prng_impl='foo'.*threefry2x32"),
        ({"train__keep": 0}, "config.train.keep=0 must be >= 1"),
        ({"data__bucket_step": 0}, "config.data.bucket_step=0 must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            build_with(**change)
    # eval_examples cuts the validation split only, test_examples the test split only.
    exp = build_with(data__eval_examples=5)
    assert len(exp.loader.examples("validation")) == 5
    assert len(exp.loader.examples("test")) == 32
    # test_examples: N test rows drawn with a fixed seed (not the first N: datasets
    # are often sorted by label), the same in every run.
    whole = [x.tolist() for x in build_with().loader.examples("test").arrays["input_ids"]]
    cut = build_with(data__test_examples=7)
    assert len(cut.loader.examples("validation")) == 32
    kept = [x.tolist() for x in cut.loader.examples("test").arrays["input_ids"]]
    chosen = np.sort(np.random.default_rng(0).permutation(32)[:7])
    assert kept == [whole[i] for i in chosen] and list(chosen) != list(range(7))


def test_feature_the_model_lacks_is_a_config_error(tiny, tmp_path):
    """BERT's pooler as the feature, on a checkpoint saved without a pooler."""
    from safetensors.numpy import load_file, save_file

    model_dir = tmp_path / "no_pooler"
    shutil.copytree(tiny[0], model_dir)
    tensors = load_file(model_dir / "model.safetensors")
    save_file(
        {k: v for k, v in tensors.items() if "pooler" not in k},
        model_dir / "model.safetensors",
        metadata={"format": "pt"},
    )
    config = tiny_config(model_dir, tiny[1], prng_impl="rbg")
    config.task.pooling = "pooler"
    with pytest.raises(ConfigError, match="config.task.pooling='pooler'.*has no pooler"):
        build(config)


def test_xla_options_parse_and_reach_the_compiler(tiny):
    config = config_for(tiny, xla_options=" xla_backend_optimization_level=0, xla_x=true,")
    assert compiler_options(config) == {"xla_backend_optimization_level": 0, "xla_x": True}
    for bad in ("xla_backend_optimization_level", "backend_optimization_level=0", "xla_a="):
        config.train.xla_options = bad
        with pytest.raises(ConfigError, match="config.train.xla_options=.*is not 'xla_"):
            compiler_options(config)
    # The options reach XLA: it names one it does not know when the train step compiles.
    config.train.xla_options = "xla_no_such_option=1"
    exp = build(config)
    state, shardings = initial_state(exp)
    batch = next(iter(exp.loader.train_batches(0, 0)))
    with pytest.raises(Exception, match="No such compile option: 'xla_no_such_option'"):
        Steps(exp, shardings).train(state, batch, jax.random.PRNGKey(0))


def test_bf16_matmul_precision_reaches_the_steps_and_the_evaluation(tiny, tmp_path):
    """model.matmul_precision=bfloat16: another run (its losses move by bf16 rounding,
    no more), whose test metrics ftjax.evaluate reproduces exactly from its config."""
    results = {}
    for precision in ("", "bfloat16"):
        config = config_for(tiny, max_steps=3)
        config.train.log_every = 1
        config.model.matmul_precision = precision
        results[precision] = loop.run(config, tmp_path / (precision or "exact"))["test"]
    exact, rounded = (train_losses(tmp_path / name) for name in ("exact", "bfloat16"))
    assert exact != rounded
    np.testing.assert_allclose(list(rounded.values()), list(exact.values()), rtol=2e-2)
    assert evaluate(tmp_path / "bfloat16")["test"] == results["bfloat16"]
    config.model.matmul_precision = "float16"
    with pytest.raises(ConfigError, match="config.model.matmul_precision='float16'"):
        build(config)


def test_batch_not_divisible_by_the_data_axis():
    config = tiny_config(Path("unused"), Path("unused"))
    from ftjax.training.config import validate

    config.data.batch_size = 12
    with pytest.raises(ConfigError, match=r"batch_size.*=12 is not divisible.*data x fsdp = 8"):
        validate(config, mesh_batch_divisor=8)


def test_misspelt_field_from_the_shell_is_named():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftjax.main",
            "--config",
            "configs/sentiment.py",
            "--config.method.rnak=16",
            "--workdir",
            "/tmp/never-used",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "rnak" in proc.stderr


def test_resume_refuses_a_changed_backbone(tiny, tmp_path):
    """Checkpoints hold only what trains; the reloaded frozen backbone must hash the same."""
    from ftjax.models import BertModel, from_pretrained, init_params, save_pretrained

    model_dir = shutil.copytree(tiny[0], tmp_path / "model")
    config = tiny_config(model_dir, tiny[1], "lora", prng_impl="rbg", max_steps=2)
    loop.run(config, tmp_path / "w")
    model, _ = from_pretrained(model_dir)
    save_pretrained(BertModel(model.config), init_params(model, 1), model_dir)  # new weights
    with pytest.raises(checkpoints.ResumeError, match="frozen params differ"):
        loop.run(config, tmp_path / "w")


def test_resume_refuses_a_changed_config_and_keeps_the_record(tiny, tmp_path):
    """A resume with another seed, batch size or method option would silently train a
    different run; it is refused by field, and config.json stays the original's."""
    workdir = tmp_path / "w"
    config = config_for(tiny, max_steps=2)
    loop.run(config, workdir)
    record = (workdir / "config.json").read_text()
    changed = config_for(tiny, max_steps=2, seed=1)
    changed.data.batch_size = 4
    changed.method.rank = 4
    with pytest.raises(checkpoints.ResumeError) as refused:
        loop.run(changed, workdir)
    for field in ("train.seed: 0 -> 1", "data.batch_size: 8 -> 4", "method.rank: 8 -> 4"):
        assert field in str(refused.value)
    assert (workdir / "config.json").read_text() == record

    observed_differently = config_for(tiny, max_steps=2, eval_every=1)
    observed_differently.train.log_every = 2
    observed_differently.data.eval_batch_size = 8
    observed_differently.mesh.update(data=1)
    assert loop.run(observed_differently, workdir)["step"] == 2  # resumes: only tests again
    assert (workdir / "config.json").read_text() == record


def test_resume_checks_the_checkpoint_not_just_config_json(tiny, tmp_path):
    """An edited config.json cannot smuggle a changed run past the check: the checkpoint
    carries the fingerprint of the config it was trained with."""
    workdir = tmp_path / "w"
    loop.run(config_for(tiny, max_steps=2), workdir)
    changed = config_for(tiny, max_steps=2, seed=3)
    loop.save_config(changed, workdir)
    with pytest.raises(checkpoints.ResumeError, match="config.json was edited"):
        loop.run(changed, workdir)


@pytest.mark.parametrize(
    "extra", [{}, {"extra_trainable": ("encoder/layer_1/.*norm.*",)}, {"train_embeddings": True}]
)
def test_probe_caches_features_only_when_just_the_head_trains(tiny, extra):
    """Cached features would freeze whatever else the table says trains: with extra
    trainable params the backbone runs every step, and those params move."""
    from ftjax.training.loaders import FeatureLoader, TokenLoader

    config = config_for(tiny, "probe")
    config.method.update(extra)
    exp = build(config)
    state, shardings = initial_state(exp)
    trained = {p for p, on in exp.mask.items() if on}
    assert isinstance(exp.loader, TokenLoader if extra else FeatureLoader)
    assert any(not p.startswith("head/") for p in trained) == bool(extra)
    steps = Steps(exp, shardings)
    before = {p: np.asarray(v) for p, v in state.trainable.items()}
    for i, batch in enumerate(exp.loader.train_batches(0, 0)):
        if i == 2:
            break
        state, _ = steps.train(state, batch, jax.random.PRNGKey(i))
    moved = {p for p, v in state.trainable.items() if not np.array_equal(np.asarray(v), before[p])}
    assert moved == trained


def test_mfu_counts_the_whole_step_against_a_closed_form(tmp_path):
    """A probe's step on a ReLU BERT is its forward pass: matmuls in closed form, plus a
    few percent of elementwise work. Counted whole with gradient accumulation too (a scan
    body is not one micro-batch), and without the compilation in the step's time."""
    model_dir = make_checkpoint(
        tmp_path / "m", hidden_size=64, intermediate_size=256, hidden_act="relu"
    )
    data = make_dataset(tmp_path / "d", (("train", 32), ("validation", 8), ("test", 8)))
    b, s, h, i, layers = 8, 32, 64, 256, 2
    projections_and_mlp = 2 * b * s * (4 * h * h + 2 * h * i)
    scores_and_mixing = 2 * 2 * b * s * s * h
    closed_form = layers * (projections_and_mlp + scores_and_mixing)
    peak = 1e12
    for accum in (1, 2):
        config = tiny_config(model_dir, data, "probe", prng_impl="rbg", max_steps=2)
        config.train.peak_flops = peak
        config.method.cache_features = False
        config.model.dropout = config.task.head_dropout = 0.0
        config.optimizer.grad_accum = accum
        config.data.update(max_length=s, bucket_step=s)
        loop.run(config, tmp_path / f"accum{accum}")
        rows = [json.loads(line) for line in (tmp_path / f"accum{accum}" / "metrics.jsonl").open()]
        train = [r for r in rows if r["kind"] == "train"]
        assert len(train) == 2
        for row in train:
            counted = row["mfu"] * row["step_seconds"] * peak * jax.device_count()
            assert closed_form <= counted <= 1.05 * closed_form, (accum, counted / closed_form)
        # A step timed with its compilation would last at least the compilation (which
        # may be a load from the suite's persistent cache: a tenth of a second).
        assert train[0]["step_seconds"] < train[0]["compile_seconds"] / 2


def test_a_run_sets_its_prng_per_key_and_leaves_the_process_default(tiny):
    """Two runs in one process, threefry and rbg: each one's keys carry its own
    implementation (head init, method init, the loop's keys) and neither changes JAX's
    default, which the process keeps whatever ran before."""
    default = jax.config.jax_default_prng_impl
    heads = {}
    for impl in ("threefry2x32", "rbg"):
        exp = build(tiny_config(*tiny, "lora", prng_impl=impl))
        key = run_key(exp.config)
        assert str(jax.random.key_impl(key)) == impl
        assert jax.config.jax_default_prng_impl == default
        heads[impl] = jax.flatten_util.ravel_pytree(exp.params["head"])[0]
        again = jax.flatten_util.ravel_pytree(exp.task.init_head(key)["head"])[0]
        np.testing.assert_array_equal(heads[impl], again)  # the head came from the run's key
    assert not np.array_equal(heads["threefry2x32"], heads["rbg"])
