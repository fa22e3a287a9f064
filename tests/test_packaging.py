"""`pip install .` (not editable) must work without the source tree: the default run
reads configs/ from the installed package ftjax.configs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_the_configs_and_main_finds_its_default(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("ftjax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"ftjax/configs/{p.name}" for p in (ROOT / "configs").glob("*.py")}
    assert shipped <= names

    installed = tmp_path / "site"  # the wheel's files, ahead of the editable source tree
    zipfile.ZipFile(wheel).extractall(installed)
    check = "\n".join(
        [
            "import importlib.util, os, ftjax.main as main",
            "assert main.__file__.startswith(os.environ['PYTHONPATH']), main.__file__",
            "spec = importlib.util.spec_from_file_location('config', main.DEFAULT_CONFIG)",
            "module = importlib.util.module_from_spec(spec)",
            "spec.loader.exec_module(module)",
            "print(module.get_config().model.name)",
        ]
    )
    env = dict(os.environ, PYTHONPATH=str(installed))
    proc = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "minilm"
