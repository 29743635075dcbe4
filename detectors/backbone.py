"""AST backbones: the compact one this project trains and ships, or any pretrained checkpoint.

A backbone turns ``(batch, frames, 128)`` fbank features into the hidden states of every
layer; which layers and which pooling make the embedding is the head's choice, because it was
chosen by measurement together with the head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import ASTConfig, ASTModel

from detectors.types import DetectorError

SHIPPED_DIR = Path(__file__).parent / "weights"
COMPACT_NAME = "compact-ast"
POOLED_KINDS = {"mean": (0,), "cls": (1,), "mean+cls": (0, 1)}
"""Which of a layer's two pooled vectors (patch mean 0, CLS 1) each pooling concatenates."""
POOLINGS = tuple(POOLED_KINDS)


def compact_config(max_length: int = 300) -> ASTConfig:
    """A 4-layer, 192-wide AST on non-overlapping 16x16 patches: a few MB, >100x real time."""
    return ASTConfig(
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
        patch_size=16,
        frequency_stride=16,
        time_stride=16,
        max_length=max_length,
        num_mel_bins=128,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


@dataclass
class Backbone:
    """An AST encoder plus the name that cards and results quote."""

    model: ASTModel
    name: str

    @property
    def window_frames(self) -> int:
        return int(self.model.config.max_length)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @torch.inference_mode()
    def hidden_states(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every layer's ``(batch, tokens, hidden)`` output, the patch embedding first."""
        return layer_outputs(self.model, features)


def layer_outputs(model: ASTModel, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What ``output_hidden_states=True`` returns, computed layer by layer.

    transformers collects hidden states by patching module methods for the length of a call,
    so two threads sharing one model corrupt each other's results; walking the layers here
    keeps a shared detector safe to call from a thread pool. As in transformers, the last
    entry is the final layer after the model's closing layer norm.
    """
    states = [model.embeddings(features)]
    for layer in encoder_layers(model):
        states.append(layer(states[-1]))
    states[-1] = model.layernorm(states[-1])
    return tuple(states)


def encoder_layers(model: ASTModel) -> torch.nn.ModuleList:
    """The transformer blocks, wherever this version of transformers keeps them (see
    :func:`v4_layout`)."""
    return model.encoder.layer if hasattr(model, "encoder") else model.layers


def pool(hidden: tuple[torch.Tensor, ...], layers: list[int], pooling: str) -> torch.Tensor:
    """Concatenate the pooled tokens of the chosen layers into one vector per window.

    Tokens 0 and 1 are AST's CLS and distillation tokens; the rest are spectrogram patches.
    """
    if pooling not in POOLINGS:
        raise DetectorError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    parts = []
    for layer in layers:
        states = hidden[layer]
        if pooling in ("mean", "mean+cls"):
            parts.append(states[:, 2:].mean(dim=1))
        if pooling in ("cls", "mean+cls"):
            parts.append(states[:, :2].mean(dim=1))
    return torch.cat(parts, dim=1)


def pool_all(hidden: tuple[torch.Tensor, ...]) -> np.ndarray:
    """``(windows, layers + 1, 2, hidden)``: patch-mean and CLS pooling of every layer at once,
    so that choosing layers and pooling by measurement costs no extra forward passes."""
    return torch.stack(
        [torch.stack([h[:, 2:].mean(1), h[:, :2].mean(1)], dim=1) for h in hidden], dim=1
    ).numpy()


def select(pools: np.ndarray, layers: list[int], pooling: str) -> np.ndarray:
    """The embedding :func:`pool` would give, cut out of :func:`pool_all`'s output."""
    kinds = POOLED_KINDS[pooling]
    return np.concatenate([pools[:, layer, kind] for layer in layers for kind in kinds], axis=1)


def load_backbone(spec: str | Path | None = None) -> Backbone:
    """Resolve ``None`` (the shipped compact AST), a local directory or a Hugging Face id.

    Pretrained checkpoints load from disk or the local Hugging Face cache only, and only from
    safetensors: audioguard never downloads at run time and never unpickles outside weights.
    """
    if spec is None or str(spec) == COMPACT_NAME:
        return load_compact(SHIPPED_DIR / "compact_ast")
    path = Path(spec)
    if (path / "compact_ast.safetensors").exists():
        return load_compact(path / "compact_ast")
    if path.suffix == ".safetensors" or path.with_suffix(".safetensors").exists():
        return load_compact(path.with_suffix(""))
    if _looks_like_a_path(str(spec)) and not path.expanduser().exists():
        raise DetectorError(
            f"{spec}: no such folder; pass a local directory holding config.json and "
            "model.safetensors, or the id of a Hugging Face checkpoint (such as "
            "MIT/ast-finetuned-audioset-10-10-0.4593) already in the local cache"
        )
    try:
        model = ASTModel.from_pretrained(str(spec), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as exc:
        # transformers' own text speaks of a connection that local_files_only never tried;
        # it stays chained for --debug, and only a folder's refusal says something new.
        if path.expanduser().is_dir():
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DetectorError(
                f"{spec}: is not a folder holding an AST config.json and model.safetensors "
                f"({reason})"
            ) from exc
        raise DetectorError(
            f"{spec}: no such folder, and no AST checkpoint of that id in the local Hugging "
            f"Face cache as safetensors; download it once with `huggingface-cli download "
            f"{spec}`, or pass a local directory holding config.json and model.safetensors"
        ) from exc
    return Backbone(model=model, name=str(spec))


def _looks_like_a_path(spec: str) -> bool:
    """A Hugging Face id is ``name`` or ``namespace/name``; anything absolute, relative to
    ``.`` or ``~``, or with more than one separator can only be meant as a folder."""
    return (
        Path(spec).is_absolute()
        or spec.startswith(("~", "./", "../", ".\\", "..\\"))
        or spec.count("/") > 1
        or "\\" in spec
    )


def load_compact(stem: Path) -> Backbone:
    """Load ``<stem>.safetensors`` with its ``<stem>.json`` card (which holds the config)."""
    weights, card_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if not weights.exists() or not card_path.exists():
        raise DetectorError(f"compact AST weights missing: expected {weights} and {card_path}")
    card = json.loads(card_path.read_text())
    model = ASTModel(ASTConfig(**card["config"]))
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DetectorError(f"{weights} does not match its card: missing {missing[:3]}")
    return Backbone(model=model.eval(), name=f"{COMPACT_NAME}-{card.get('version', 1)}")


_V5_TO_V4 = (
    ("attention.q_proj.", "attention.attention.query."),
    ("attention.k_proj.", "attention.attention.key."),
    ("attention.v_proj.", "attention.attention.value."),
    ("attention.o_proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
)


def v4_layout(name: str) -> str:
    """A parameter name in the layout of transformers 4, which this package pins.

    transformers 5 renamed the AST's layers (``layers.0.attention.q_proj`` for
    ``encoder.layer.0.attention.attention.query``) without changing the arithmetic; a model
    trained where 5 is installed (a lent GPU machine) is saved under the names 4 loads.
    """
    if not name.startswith("layers."):
        return name
    for new, old in _V5_TO_V4:
        name = name.replace(new, old)
    return "encoder.layer." + name.removeprefix("layers.")


def save_compact(model: ASTModel, stem: Path, card: dict[str, object]) -> None:
    """Write the weights as safetensors and the card (config + how it was trained) as JSON."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    state = {v4_layout(k): v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(stem.with_suffix(".safetensors")))
    full_card = {**card, "config": model.config.to_diff_dict()}
    stem.with_suffix(".json").write_text(json.dumps(full_card, indent=2) + "\n")
