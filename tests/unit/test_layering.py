"""The layering the design promises, checked in a fresh interpreter (``sys.modules`` after an
import): the pure core loads nothing else of the package and no I/O library, and the daemon's
config does not load the emulator (only its settings schema, which the config embeds)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import scheduler.core

ROOT = Path(__file__).resolve().parents[2]
CORE_MODULES = sorted(
    f"scheduler.core.{info.name}" for info in pkgutil.iter_modules(scheduler.core.__path__)
)
IO_LIBRARIES = ("aiohttp", "redis", "pydantic", "yaml", "structlog", "prometheus_client")


def modules_loaded_by(module: str) -> set[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


def test_every_core_module_is_listed() -> None:
    assert "scheduler.core.cost" in CORE_MODULES
    assert len(CORE_MODULES) >= 8


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_imports_nothing_else_of_the_package_and_no_io(module: str) -> None:
    loaded = modules_loaded_by(module)
    outside = {
        name
        for name in loaded
        if name.startswith("scheduler.") and not name.startswith("scheduler.core")
    }
    assert not outside, f"{module} loads {sorted(outside)}"
    libraries = {name for name in loaded if name.split(".")[0] in IO_LIBRARIES}
    assert not libraries, f"{module} loads {sorted(libraries)}"


def test_config_does_not_load_the_emulator() -> None:
    loaded = modules_loaded_by("scheduler.config")
    emulator = {name for name in loaded if name.startswith("scheduler.emulator.")}
    assert emulator <= {"scheduler.emulator.settings"}, sorted(emulator)
    assert "aiohttp" not in loaded
