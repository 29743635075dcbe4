"""Shared fixtures: the bundled sample clips, read without going through the code under test."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import soundfile as sf
import torch

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str) -> ModuleType:
    """A file of ``scripts/`` as a module: scripts are not a package, yet their pieces are
    tested like any other code."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_sample(relative: str, root: Path = SAMPLES) -> tuple[torch.Tensor, int]:
    """A bundled clip (under ``samples/`` unless ``root`` says otherwise) as float32
    (channels, samples) and its rate."""
    data, rate = sf.read(root / relative, dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), rate


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture()
def run():
    """Invoke the ``audioguard`` CLI in-process: ``run("scan", path, "--json")``."""
    from click.testing import CliRunner

    from guard.cli import cli

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke
