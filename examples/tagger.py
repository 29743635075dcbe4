"""The project's own AST classifier as a Hugging Face audio-classification pipeline, guarded.

    python examples/tagger.py [AUDIO...] [--head HEAD.json] [--key KEYFILE]...

The shipped detector (or the head given) is exported as a local ``transformers`` model and
loaded with ``pipeline("audio-classification", model=DIR)``, offline. Wrapped in one line,
every input is screened: the synthetic-voice score, the watermarks found (AudioSeal, PerthNet,
and the keyed mark for each key given) and the policy's decision join the classifier's own
labels.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from transformers import pipeline

from detectors import load_detector
from detectors.hf_export import export_detector
from guard.audio import AudioError, iter_audio_paths, load
from guard.guard import Guard, GuardConfig
from guard.wrappers import GuardedTagger

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "speech"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="*", default=[SAMPLES])
    parser.add_argument("--head", help="a detector head file (default: the shipped one)")
    parser.add_argument("--key", action="append", default=[], help="a keyed-watermark key")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as model_dir:
        export_detector(load_detector(args.head), model_dir)
        classifier = pipeline("audio-classification", model=model_dir)
    guard = Guard(GuardConfig(detector_head=args.head, keys=tuple(map(Path, args.key))))
    tagger = GuardedTagger.from_pipeline(classifier, guard)

    for path in iter_audio_paths(args.audio):
        try:
            audio, info = load(path)
        except AudioError as err:
            print(f"error: {err}")
            continue
        tagged = tagger(audio, info.sample_rate)
        print(f"{path.name}: " + ", ".join(f"{t.label} {t.score:.2f}" for t in tagged.labels))


if __name__ == "__main__":
    main()
