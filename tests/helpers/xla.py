"""XLA settings for the test suite.

Most of the suite's time is XLA compiling small steps (3-6 s each on this CPU), not
running them. LLVM's optimisation passes are most of that and buy little for tiny
graphs: without them a tiny train step compiles in about half the time. The HLO, and so
every invariant tested (parity with PyTorch within tolerance, bit-identical resumes and
shardings within one setting), is unchanged; only the machine code is less optimised.
The few tests that run long put XLA's defaults back for their steps with
`config.train.xla_options = XLA_DEFAULTS` (their own jits: `default_options()`).
Production runs keep XLA's defaults.
"""

from __future__ import annotations

import os

DEVICE_COUNT = "--xla_force_host_platform_device_count"
FAST_COMPILE = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    # XLA:CPU's older fusion emitters: a tiny train step compiles in ~1.6 s, not ~2.4 s
    # (at full optimisation the newer ones compile faster, and production uses them).
    "--xla_cpu_use_fusion_emitters=false",
)
# XLA's own defaults (xla/debug_options_flags.cc), as config.train.xla_options.
XLA_DEFAULTS = (
    "xla_backend_optimization_level=3,xla_llvm_disable_expensive_passes=false,"
    "xla_cpu_use_fusion_emitters=true"
)


def default_options() -> dict[str, bool | int | float | str]:
    """XLA_DEFAULTS as `jax.jit(..., compiler_options=...)`: for a test's own jit of a
    real-size model, whose run costs more than its compile."""
    from ftjax.training.config import parse_xla_options

    return parse_xla_options(XLA_DEFAULTS)


def flags(device_count: int | None = None) -> str:
    """XLA_FLAGS for a test process: the inherited flags plus fast compilation; with
    `device_count`, that many simulated CPU devices instead of any inherited count."""
    wanted = [*os.environ.get("XLA_FLAGS", "").split(), *FAST_COMPILE]
    if device_count is not None:
        wanted = [f for f in wanted if not f.startswith(DEVICE_COUNT)]
        wanted.append(f"{DEVICE_COUNT}={device_count}")
    return " ".join(dict.fromkeys(wanted))
