"""Shared fixtures: the bundled sample clips, read without going through the code under test."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


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
