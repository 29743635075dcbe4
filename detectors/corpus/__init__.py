"""The synthetic-voice detector's training corpus, built from Debian packages alone.

``build_corpus(OUT)`` writes real speech from the packages in `sources.REAL_SOURCES` (only the
files in which a VAD hears speech: `heard_speech`) and synthetic speech from espeak-ng, flite,
festival and vocoder re-synthesis of the real clips, all through the same neutralising
channel; ``load_manifest(OUT)`` reads it back, and ``shortcut_auc(OUT)`` checks that trivial
statistics cannot tell the classes apart.
``build_independent_eval(OUT)`` makes a small evaluation set from speech and generators that
the corpus never uses.
"""

from detectors.corpus.build import build_corpus
from detectors.corpus.independent import build_independent_eval
from detectors.corpus.manifest import corpus_recipe, load_manifest
from detectors.corpus.shortcut import shortcut_auc

__all__ = [
    "build_corpus",
    "corpus_recipe",
    "build_independent_eval",
    "load_manifest",
    "shortcut_auc",
]
