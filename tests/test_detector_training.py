"""Training the compact AST: a few steps end to end, and weights saved in the layout we load."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import ASTModel

from detectors.backbone import compact_config, layer_outputs, load_compact, save_compact, v4_layout
from detectors.frontend import frames_for
from detectors.pretraining import pretrain
from detectors.training import Clip, TrainSettings, train_backbone

_V4_TO_V5 = (
    ("encoder.layer.", "layers."),
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)


def _v5_name(name: str) -> str:
    """transformers 5's name for a 4.x AST parameter, written out from its modeling file."""
    for old, new in _V4_TO_V5:
        name = name.replace(old, new)
    return name


def test_names_from_transformers_5_map_back_to_the_layout_we_load():
    names = list(ASTModel(compact_config()).state_dict())
    assert any(name.startswith("encoder.layer.") for name in names)
    assert [v4_layout(_v5_name(name)) for name in names] == names


def _clips(count: int, seconds: float, seed: int) -> list[Clip]:
    """Synthetic feature clips whose class shows as a brighter top band, two sources each."""
    gen = torch.Generator().manual_seed(seed)
    clips = []
    for i in range(count):
        label = i % 2
        features = torch.randn(frames_for(seconds), 128, generator=gen) * 0.3
        features[:, 96:] += 0.8 * label
        source = f"{'synthetic' if label else 'real'}-{i % 4 // 2}"
        clips.append(Clip(features.half(), label, "fake", source, source, {"id": i}))
    return clips


def test_a_few_training_steps_keep_the_best_weights_and_save_them(tmp_path: Path):
    settings = TrainSettings(minutes=5.0, batch=4, window_s=1.0, max_steps=4, validate_every=2)
    init = pretrain(_clips(8, 1.5, 0), frames_for(1.0), minutes=0.002, batch=4)
    ast, summary = train_backbone(
        _clips(16, 1.5, 1), _clips(8, 1.5, 2), settings, log=lambda _: None, init=init
    )
    assert summary["steps"] == 4 and [h["step"] for h in summary["history"]] == [2, 4]
    assert summary["best_val_eer"] == min(h["eer"] for h in summary["history"])
    assert all(p.device.type == "cpu" for p in ast.parameters())
    save_compact(ast, tmp_path / "compact_ast", {"version": 1})
    loaded = load_compact(tmp_path / "compact_ast").model
    x = torch.randn(2, frames_for(1.0), 128)
    assert torch.equal(layer_outputs(loaded, x)[-1], layer_outputs(ast, x)[-1])


def _train_detector_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "train_detector.py"
    spec = importlib.util.spec_from_file_location("train_detector", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_head_names_its_backbone_by_a_path_that_works_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    script = _train_detector_script()
    monkeypatch.chdir(script.WEIGHTS.parents[1])
    assert script.head_backbone_spec(Path("detectors/weights")) is None
    monkeypatch.chdir(tmp_path)
    assert script.head_backbone_spec(Path("heads")) == str(tmp_path / "heads" / "compact_ast")
