"""The corpus manifest: ``OUT/manifest.jsonl``, one JSON object per clip, sorted by id.

Fields: ``id``, ``path`` (relative to OUT), ``label`` (real | synthetic), ``family`` (real,
espeak-ng, flite, festival, world, griffinlim, lpc), ``source`` (package or voice),
``speaker``, ``language``, ``gender`` (female | male | unknown; for a synthetic voice, the
pitch range it was rendered in), ``split`` (train | val | test),
``duration`` (seconds), ``augment`` ("none" or e.g. ``reverb:0.42s+mp3:64k``) and ``channel``
(telephone, wide or lowpass:HZ).
"""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "manifest.jsonl"


def manifest_path(out_dir: Path) -> Path:
    return Path(out_dir) / MANIFEST


def write_manifest(out_dir: Path, rows: list[dict[str, object]]) -> Path:
    """Write atomically, so a reader never sees half a manifest."""
    path = manifest_path(out_dir)
    tmp = path.with_suffix(".tmp")
    ordered = sorted(rows, key=lambda r: str(r["id"]))
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
    tmp.replace(path)
    return path


def load_manifest(out_dir: Path) -> list[dict[str, object]]:
    """The rows of a built corpus (or independent evaluation set)."""
    path = manifest_path(out_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: build the corpus first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


RECIPE_FIELDS = ("version", "seed", "clips_per_source")


def corpus_recipe(out_dir: Path) -> dict[str, object]:
    """The recipe fields of a build's ``corpus.json`` that a model card records, so a model
    and a corpus can be checked to belong together (a GPU copy keeps them: see
    ``scripts/pack_detector_corpus.py``)."""
    recipe = json.loads((Path(out_dir) / "corpus.json").read_text()).get("recipe", {})
    return {k: recipe.get(k) for k in RECIPE_FIELDS}
