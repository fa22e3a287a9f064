"""Importing a script or config file by path (benchmarks/*.py and configs/*.py are not
packages the tests can import by name)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_module(path: Path) -> ModuleType:
    """The module in file `path`, registered in sys.modules under a name of its own
    (a dataclass looks its module up there)."""
    name = f"_loaded_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
