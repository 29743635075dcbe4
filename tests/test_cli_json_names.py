"""JSON from embed, policy check and audit verify stays valid UTF-8 for a name that is not."""

from __future__ import annotations

import json
import os

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from guard.cli import cli

ODD = os.fsdecode(b"bad\xffname")  # a Latin-1 byte: legal in a Linux file name


def _run(*args) -> list[dict]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    # strict UTF-8: a lone surrogate, even escaped as \udcff, is not a character
    text = result.stdout.encode("utf-8").decode("utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    for line in lines:
        json.dumps(line, ensure_ascii=False).encode("utf-8")
    return lines


def test_embed_json_escapes_the_names(tmp_path):
    key = tmp_path / "org.key"
    assert CliRunner().invoke(cli, ["watermark", "keygen", str(key)]).exit_code == 0
    source = tmp_path / f"{ODD}.wav"
    noise = np.random.default_rng(0).standard_normal(5 * 16000).astype("float32")
    sf.write(os.fsencode(source), 0.1 * noise, 16000)

    (report,) = _run(
        "watermark",
        "embed",
        source,
        tmp_path / f"{ODD}.out.wav",
        "--key",
        key,
        "--payload",
        "1",
        "--json",
    )

    assert report["source"].endswith("bad\\xffname.wav")
    assert report["path"].endswith("bad\\xffname.out.wav")


def test_policy_check_and_audit_verify_json_escape_the_names(tmp_path):
    policy = tmp_path / f"{ODD}.yaml"
    policy.write_text("name: p\nversion: 1\ndefault: allow\nrules: []\n")
    broken = tmp_path / f"{ODD}-broken.yaml"
    broken.write_text("name: p\nversion: 1\ndefault: maybe\nrules: []\n")
    log = tmp_path / f"{ODD}.jsonl"
    log.write_text("")

    good, bad = _run("policy", "check", "--json", policy, broken)
    (verified,) = _run("audit", "verify", log, "--json")

    assert good["path"].endswith("bad\\xffname.yaml")
    assert bad["path"].endswith("bad\\xffname-broken.yaml")
    assert all("\udcff" not in p for p in bad["problems"])
    assert verified["path"].endswith("bad\\xffname.jsonl")
