"""Training the compact AST: a few steps end to end, and weights saved in the layout we load."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import load_script
from transformers import ASTModel

from detectors import evaluation
from detectors.backbone import (
    SHIPPED_DIR,
    compact_config,
    layer_outputs,
    load_compact,
    save_compact,
    v4_layout,
)
from detectors.evaluation import Scores
from detectors.frontend import frames_for
from detectors.pretraining import pretrain
from detectors.training import Clip, TrainSettings, train_backbone

V5_NAMES = [  # ASTModel(compact_config()).state_dict() under transformers 5.17: layer 0, the rest
    "embeddings.cls_token",
    "embeddings.distillation_token",
    "embeddings.patch_embeddings.projection.bias",
    "embeddings.patch_embeddings.projection.weight",
    "embeddings.position_embeddings",
    "layernorm.bias",
    "layernorm.weight",
    "layers.0.attention.k_proj.bias",
    "layers.0.attention.k_proj.weight",
    "layers.0.attention.o_proj.bias",
    "layers.0.attention.o_proj.weight",
    "layers.0.attention.q_proj.bias",
    "layers.0.attention.q_proj.weight",
    "layers.0.attention.v_proj.bias",
    "layers.0.attention.v_proj.weight",
    "layers.0.layernorm_after.bias",
    "layers.0.layernorm_after.weight",
    "layers.0.layernorm_before.bias",
    "layers.0.layernorm_before.weight",
    "layers.0.mlp.fc1.bias",
    "layers.0.mlp.fc1.weight",
    "layers.0.mlp.fc2.bias",
    "layers.0.mlp.fc2.weight",
]


def test_names_from_transformers_5_map_onto_the_layout_we_load():
    names = ASTModel(compact_config()).state_dict()
    layer_zero = {n for n in names if not n.startswith("encoder.layer.") or ".layer.0." in n}
    assert {v4_layout(n) for n in V5_NAMES} == layer_zero
    assert all(v4_layout(n) == n for n in names)


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


def _train(max_steps: int, eers: list[float], monkeypatch: pytest.MonkeyPatch, init=None):
    """Train on fixed clips, with validation answering ``eers`` in turn (one per step)."""
    answers = iter(eers)
    monkeypatch.setattr(
        evaluation, "score", lambda labels, scores: Scores(next(answers), 0.5, 4, 4)
    )
    settings = TrainSettings(
        minutes=5.0, batch=4, window_s=1.0, max_steps=max_steps, validate_every=1
    )
    return train_backbone(
        _clips(16, 1.5, 1), _clips(8, 1.5, 2), settings, log=lambda _: None, init=init
    )


def test_training_keeps_the_weights_of_the_best_validation(monkeypatch: pytest.MonkeyPatch):
    best, _ = _train(2, [0.3, 0.1], monkeypatch)
    kept, summary = _train(4, [0.3, 0.1, 0.4, 0.5], monkeypatch)
    assert summary["steps"] == 4 and summary["best_val_eer"] == 0.1
    last, _ = _train(4, [0.3, 0.2, 0.15, 0.1], monkeypatch)
    for name, weight in best.state_dict().items():
        assert torch.equal(kept.state_dict()[name], weight)
    assert any(not torch.equal(last.state_dict()[n], w) for n, w in best.state_dict().items())


def test_pretrained_weights_train_and_round_trip_through_safetensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    init = pretrain(_clips(8, 1.5, 0), frames_for(1.0), minutes=0.002, batch=4)
    ast, _ = _train(2, [0.3, 0.2], monkeypatch, init=init)
    assert all(p.device.type == "cpu" for p in ast.parameters())
    save_compact(ast, tmp_path / "compact_ast", {"version": 1})
    loaded = load_compact(tmp_path / "compact_ast").model
    x = torch.randn(2, frames_for(1.0), 128)
    assert torch.equal(layer_outputs(loaded, x)[-1], layer_outputs(ast, x)[-1])


def test_a_head_names_its_backbone_by_a_path_that_works_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    script = load_script("train_detector")
    monkeypatch.chdir(script.WEIGHTS.parents[1])
    assert script.head_backbone_spec(Path("detectors/weights")) is None
    monkeypatch.chdir(tmp_path)
    assert script.head_backbone_spec(Path("heads")) == str(tmp_path / "heads" / "compact_ast")


def test_a_fold_leaves_its_family_out_of_every_split(monkeypatch: pytest.MonkeyPatch):
    script = load_script("train_detector")
    clips = {"train": _clips(8, 1.0, 0), "val": _clips(4, 1.0, 1)}
    clips["train"][1] = Clip(clips["train"][1].features, 1, "world", "w", "w", {})
    kept = script.leave_out(clips, ["world"])
    assert len(kept["train"]) == 7 and len(kept["val"]) == 4
    assert all(c.family != "world" for split in kept.values() for c in split)
    with pytest.raises(SystemExit, match="wrold: not a synthetic family"):
        script.leave_out(clips, ["wrold"])
    monkeypatch.setattr("sys.argv", ["train_detector.py", "--exclude-family", "world"])
    with pytest.raises(SystemExit):  # the fold would overwrite the shipped backbone
        script.parse_args()
    with pytest.raises(ValueError, match="world"):
        train_backbone(clips["train"], [], TrainSettings(max_steps=1, exclude_families=("world",)))


def _fold(root: Path, family: str, excluded: list[str], seed: int = 0, minutes: float = 1.0):
    ast = ASTModel(compact_config(max_length=frames_for(1.0)))
    card = {
        "training": {"exclude_families": excluded, "minutes": minutes, "steps": 5, "batch": 4},
        "trained_on": {"recipe": {"version": 1, "seed": seed, "clips_per_source": 10}},
    }
    save_compact(ast, root / family / "compact_ast", card)


def test_the_benchmark_takes_only_folds_that_left_out_their_family(tmp_path: Path):
    from benchmarks.detector import load_folds

    recipe = {"version": 1, "seed": 0, "clips_per_source": 10}  # as corpus_recipe gives it
    groups = {"lpc": ("lpc",), "world": ("world",)}
    _fold(tmp_path, "lpc", [])
    with pytest.raises(SystemExit, match="exactly 'lpc' was left out"):
        load_folds(tmp_path, {"lpc": ("lpc",)}, recipe)
    _fold(tmp_path, "lpc", ["lpc"], seed=1)
    with pytest.raises(SystemExit, match="not this one's"):
        load_folds(tmp_path, {"lpc": ("lpc",)}, recipe)
    _fold(tmp_path, "lpc", ["lpc"])
    with pytest.raises(SystemExit, match="no fold backbone for 'world'"):
        load_folds(tmp_path, groups, recipe)
    _fold(tmp_path, "world", ["world"], minutes=2.0)
    with pytest.raises(SystemExit, match="same settings"):
        load_folds(tmp_path, groups, recipe)
    _fold(tmp_path, "world", ["world"])
    folds, text = load_folds(tmp_path, groups, recipe)
    assert set(folds) == {"lpc", "world"} and text.startswith("5–5 steps of batch 4 in 1 min")


def test_festival_and_flite_are_left_out_together(tmp_path: Path):
    """flite is festival's C port with the same voice: a fold without just one of them has
    still heard the engine, so the benchmark only takes a fold that left out both."""
    from benchmarks.detector import fold_groups, load_folds

    groups = fold_groups(["espeak-ng", "festival", "flite", "lpc"])
    assert groups == {
        "espeak-ng": ("espeak-ng",),
        "festival+flite": ("festival", "flite"),
        "lpc": ("lpc",),
    }
    assert fold_groups(["flite", "world"]) == {"flite": ("flite",), "world": ("world",)}
    recipe = {"version": 1, "seed": 0, "clips_per_source": 10}
    _fold(tmp_path, "festival+flite", ["flite"])
    with pytest.raises(SystemExit, match="exactly 'festival\\+flite' was left out"):
        load_folds(tmp_path, {"festival+flite": ("festival", "flite")}, recipe)
    with pytest.raises(SystemExit, match="--exclude-family festival --exclude-family flite"):
        load_folds(tmp_path / "none", {"festival+flite": ("festival", "flite")}, recipe)
    _fold(tmp_path, "festival+flite", ["flite", "festival"])
    folds, _ = load_folds(tmp_path, {"festival+flite": ("festival", "flite")}, recipe)
    assert set(folds) == {"festival+flite"}


def _family_clips() -> dict[str, list[Clip]]:
    """Two clips per split and family: enough to see who lands where."""
    families = [("real", 0), ("festival", 1), ("flite", 1), ("lpc", 1)]
    features = torch.zeros(frames_for(1.0), 128).half()
    return {
        split: [Clip(features, label, family, family, family, {}) for family, label in families]
        for split in ("train", "val", "test")
    }


def test_a_fold_trains_without_its_families_and_tests_only_on_them():
    from benchmarks.detector import fold_split

    train, val, test = fold_split(_family_clips(), ("festival", "flite"))
    assert {c.family for c in train} == {c.family for c in val} == {"real", "lpc"}
    assert {c.family for c in test} == {"real", "festival", "flite"}


def test_compared_trainings_must_be_whole_trainings_of_this_corpus(tmp_path: Path):
    from benchmarks.detector import compare_trainings

    recipe = {"version": 1, "seed": 0, "clips_per_source": 10}
    _fold(tmp_path, "other-corpus", [], seed=1)
    _fold(tmp_path, "a-fold", ["lpc"])
    args = (None, ([], []), None, recipe)
    with pytest.raises(SystemExit, match="another corpus recipe"):
        compare_trainings(args[0], [tmp_path / "other-corpus"], *args[1:])
    with pytest.raises(SystemExit, match="a leave-one-family-out fold"):
        compare_trainings(args[0], [tmp_path / "a-fold"], *args[1:])


def test_abstentions_are_counted_by_source():
    from benchmarks.detector import abstentions

    clips = _family_clips()["test"]
    assert abstentions(clips, [False, True, False, True]) == "2 of 4 test clips: 1 festival, 1 lpc"
    assert abstentions(clips, [False] * 4) == "0 of 4 test clips"


def test_a_training_from_another_build_is_named_as_such():
    from benchmarks.detector import other_build, shipped_training

    card = {"trained_on": {"recipe": {"version": 1, "seed": 0, "clips_per_source": 120}}}
    same = {"version": 1, "seed": 0, "clips_per_source": 120}
    newer = {**same, "version": 3}
    assert other_build(card, same) == ""
    assert other_build(card, newer) == " (recipe-1 build's val)"
    card = json.loads((SHIPPED_DIR / "compact_ast.json").read_text())
    shipped = card["trained_on"]["recipe"]
    started = card.get("initialised_from", {}).get("trained_on", {}).get("recipe", shipped)
    assert ("not this one" in shipped_training(shipped)) == (started != shipped)
    assert "not this one (recipe 99)" in shipped_training({**shipped, "version": 99})


def test_a_backbone_trained_further_starts_from_the_source_and_keeps_its_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    script = load_script("train_detector")
    source = ASTModel(compact_config(max_length=frames_for(3.0)))
    source_card = {"version": 1, "training": {"steps": 6000}, "trained_on": {"note": "GPU"}}
    save_compact(source, tmp_path / "src" / "compact_ast", source_card)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "corpus.json").write_text(json.dumps({"recipe": {"version": 3}}))
    argv = ["train_detector.py", "--corpus", str(tmp_path / "corpus"), "--out", str(tmp_path)]
    argv += ["--init-from", str(tmp_path / "src"), "--minutes", "0", "--backbone-only"]
    monkeypatch.setattr("sys.argv", argv)
    args = script.parse_args()
    clips = {"train": _clips(8, 3.5, 0), "val": _clips(4, 3.5, 1)}
    trained = script.train_and_save(args, clips, time.time())  # no time: no step taken
    for name, weight in source.state_dict().items():
        assert torch.equal(trained.state_dict()[name], weight)
    card = json.loads((tmp_path / "compact_ast.json").read_text())
    assert card["initialised_from"] == source_card
    assert "trained further" in card["what"] and card["trained_on"]["recipe"]["version"] == 3
    monkeypatch.setattr("sys.argv", [*argv, "--pretrain-minutes", "1"])
    with pytest.raises(SystemExit):  # a trained backbone is not pre-trained again
        script.parse_args()
