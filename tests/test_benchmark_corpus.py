"""The benchmark corpus cache: a larger build serves every smaller request without a rebuild."""

from __future__ import annotations

import json

import pytest

import benchmarks.corpus as corpus


def _cache(tmp_path, per_kind: int):
    clips = []
    for kind in corpus.KINDS:
        for i in range(per_kind):
            path = tmp_path / "clips" / kind / f"{i:03d}_pkg_clip{i}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
            clips.append({"path": str(path), "kind": kind, "source": "pkg", "license": "GPL"})
    manifest = {"version": corpus.CORPUS_VERSION, "per_kind": per_kind, "clips": clips}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def _no_rebuild(*args, **kwargs):
    raise AssertionError("the cache would be wiped and rebuilt")


def test_a_larger_cache_serves_a_smaller_request_as_its_first_clips(tmp_path, monkeypatch):
    cache = _cache(tmp_path, per_kind=5)
    monkeypatch.setattr(corpus, "ProcessPoolExecutor", _no_rebuild)
    clips = corpus.build_clips(cache, per_kind=3)
    for kind in corpus.KINDS:
        names = [c.path.name for c in clips if c.kind == kind]
        assert names == [f"{i:03d}_pkg_clip{i}.flac" for i in range(3)]
    assert all(p.exists() for p in (cache / "clips").rglob("*.flac"))
    assert json.loads((cache / "manifest.json").read_text())["per_kind"] == 5


def test_a_smaller_cache_is_rebuilt_for_a_larger_request(tmp_path, monkeypatch):
    cache = _cache(tmp_path, per_kind=2)
    monkeypatch.setattr(corpus, "ProcessPoolExecutor", _no_rebuild)
    with pytest.raises(AssertionError, match="rebuilt"):
        corpus.build_clips(cache, per_kind=3)


@pytest.mark.parametrize("damage", ["no per_kind", "a clip not named NNN_"])
def test_a_manifest_it_cannot_trust_is_rebuilt(tmp_path, monkeypatch, damage):
    cache = _cache(tmp_path, per_kind=3)
    manifest = json.loads((cache / "manifest.json").read_text())
    if damage == "no per_kind":
        del manifest["per_kind"]
    else:
        odd = cache / "clips" / "speech" / "odd.flac"
        odd.write_bytes(b"")
        manifest["clips"][0]["path"] = str(odd)
    (cache / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(corpus, "ProcessPoolExecutor", _no_rebuild)
    with pytest.raises(AssertionError, match="rebuilt"):
        corpus.build_clips(cache, per_kind=2)
