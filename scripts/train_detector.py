"""Train the shipped compact AST and its head on a corpus from `detectors build-corpus`.

    .venv/bin/python scripts/train_detector.py --corpus .cache/detector-corpus --minutes 25

Writes ``detectors/weights/compact_ast.{safetensors,json}`` and ``compact_ast_head.json``;
the cards record the corpus, the settings, the layer and pooling chosen on the validation
split, and the scores on the test split (speakers and sources the model never saw).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from detectors.backbone import COMPACT_NAME, save_compact, select
from detectors.corpus import load_manifest
from detectors.evaluation import breakdown, score
from detectors.frontend import frames_for
from detectors.pretraining import pretrain
from detectors.training import (
    Clip,
    TrainSettings,
    clip_scores,
    fit_head,
    layer_pools,
    load_clips,
    train_backbone,
    window_embeddings,
)

WEIGHTS = Path(__file__).resolve().parents[1] / "detectors" / "weights"
VERSION = 1


def choose_embedding(ast, train: list[Clip], val: list[Clip], frames: int, log) -> dict:
    """Try layer sets and poolings; keep the one whose head scores the lowest val EER."""
    depth = ast.config.num_hidden_layers
    train_pools, val_pools = layer_pools(ast, train, frames), layer_pools(ast, val, frames)
    candidates = [[depth], [depth - 1], [depth - 1, depth], list(range(1, depth + 1))]
    results = []
    for layers in candidates:
        for pooling in ("mean", "cls", "mean+cls"):
            tr = [select(p, layers, pooling) for p in train_pools]
            va = [select(p, layers, pooling) for p in val_pools]
            head = fit_head(
                tr,
                [c.label for c in train],
                va,
                [c.label for c in val],
                backbone="probe",
                layers=layers,
                pooling=pooling,
            )
            s = score([c.label for c in val], clip_scores(head, va))
            results.append({"layers": layers, "pooling": pooling, **s.to_dict()})
            log(f"layers {layers} pooling {pooling}: val EER {s.eer:.4f} AUC {s.auc:.4f}")
    best = min(results, key=lambda r: (r["eer"], -r["auc"]))
    return {"chosen": best, "tried": results}


def evaluate(head, ast, clips: list[Clip], frames: int) -> dict[str, object]:
    emb = window_embeddings(ast, clips, frames, head.layers, head.pooling)
    labels = [c.label for c in clips]
    scores = clip_scores(head, emb)
    families = [c.family for c in clips]
    languages = [str(c.row.get("language", "?")) for c in clips]
    genders = [str(c.row.get("gender", "?")) for c in clips]
    return {
        "overall": score(labels, scores).to_dict(),
        "by_family": {k: v.to_dict() for k, v in breakdown(labels, scores, families).items()},
        "by_language": {k: v.to_dict() for k, v in breakdown(labels, scores, languages).items()},
        "by_gender": {k: v.to_dict() for k, v in breakdown(labels, scores, genders).items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(".cache/detector-corpus"))
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pretrain-minutes",
        type=float,
        default=0.0,
        help="Masked-patch pre-training on the train and val audio (labels unused) first.",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    rows = load_manifest(args.corpus)
    splits = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    clips = {s: load_clips(args.corpus, r) for s, r in splits.items()}
    print({s: len(c) for s, c in clips.items()}, f"loaded in {time.time() - started:.0f} s")
    settings = TrainSettings(minutes=args.minutes, seed=args.seed)
    frames = frames_for(settings.window_s)
    init = None
    if args.pretrain_minutes > 0:
        unlabelled = clips["train"] + clips["val"]
        init = pretrain(unlabelled, frames, args.pretrain_minutes, seed=args.seed)
    ast, summary = train_backbone(clips["train"], clips["val"], settings, init=init)
    choice = choose_embedding(ast, clips["train"], clips["val"], frames, print)
    layers, pooling = choice["chosen"]["layers"], choice["chosen"]["pooling"]
    backbone_name = f"{COMPACT_NAME}-{VERSION}"
    tr = window_embeddings(ast, clips["train"], frames, layers, pooling)
    va = window_embeddings(ast, clips["val"], frames, layers, pooling)
    head = fit_head(
        tr,
        [c.label for c in clips["train"]],
        va,
        [c.label for c in clips["val"]],
        backbone=backbone_name,
        layers=layers,
        pooling=pooling,
    )
    test = evaluate(head, ast, clips["test"], frames)
    print(json.dumps(test["overall"]), json.dumps(test["by_family"]))
    recipe = json.loads((args.corpus / "corpus.json").read_text()).get("recipe", {})
    corpus_card = {
        "builder": "audioguard detectors build-corpus",
        "recipe": {k: recipe.get(k) for k in ("version", "seed", "clips_per_source")},
        "clips": {s: len(c) for s, c in clips.items()},
        "families": sorted({c.family for c in clips["train"]}),
    }
    save_compact(
        ast,
        args.out / "compact_ast",
        {
            "name": "compact-ast",
            "version": VERSION,
            "what": "A 4-layer 192-wide Audio Spectrogram Transformer trained from scratch to "
            "separate real from synthetic speech; use it through its head.",
            "trained_on": corpus_card,
            "training": {k: v for k, v in summary.items() if k != "history"},
            "pretraining": {
                "method": "masked patch reconstruction (SSAST-style), labels unused",
                "minutes": args.pretrain_minutes,
                "clips": "train + val splits",
            },
            "validation_history": summary["history"],
            "train_seconds": round(time.time() - started),
        },
    )
    head.card = {
        "name": f"head-{VERSION}",
        # a head written elsewhere must not silently pair with the shipped backbone
        "backbone_spec": None if args.out == WEIGHTS else str(args.out / "compact_ast"),
        "backbone": backbone_name,
        "layers": layers,
        "pooling": pooling,
        "trained_on": corpus_card,
        "embedding_choice": choice,
        "test_split": test,
    }
    head.save(args.out / "compact_ast_head.json")
    print(f"wrote {args.out} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
