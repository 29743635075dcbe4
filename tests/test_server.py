"""The HTTP service in process: config, auth, limits, every endpoint and hostile uploads.

These run the real Guard (keyed watermark with a fresh key; detector and public backends off
so they stay fast) behind FastAPI's in-process client. ``test_server_live.py`` runs the same
service on a real uvicorn.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from fastapi.testclient import TestClient

from guard.cli import cli
from guard.server import create_app
from guard.server_auth import Authenticator, require_scope
from guard.server_config import (
    ApiKey,
    ConfigError,
    ServerConfig,
    load_config,
    parse_env_keys,
    token_digest,
)
from guard.server_errors import ApiError
from guard.server_limits import AdmissionGate, RateLimiter
from policies import verify_log
from watermark.keys import write_key

SCAN_TOKEN = "scan-token-0123456789"
EMBED_TOKEN = "embed-token-0123456789"
SPEECH = "speech/fillets_society_stebet0.flac"


def api_keys() -> tuple[ApiKey, ...]:
    return (
        ApiKey("moderation", token_digest(SCAN_TOKEN), ("scan",)),
        ApiKey("tts", token_digest(EMBED_TOKEN), ("scan", "embed")),
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- files, good and hostile -------------------------------------------------------------


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def wav_header(rate: int, channels: int, bits: int, data_bytes: int) -> bytes:
    """A PCM WAV header claiming whatever we like."""
    block = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", (36 + data_bytes) & 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
        + b"data"
        + struct.pack("<I", data_bytes & 0xFFFFFFFF)
    )


def flac_claiming_hours() -> bytes:
    """A one-second FLAC whose STREAMINFO claims 2^36 - 1 samples (about 99 days)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(8000, np.float32), 8000, format="FLAC")
    data = bytearray(buffer.getvalue())
    fields = int.from_bytes(data[18:26], "big") | ((1 << 36) - 1)
    data[18:26] = fields.to_bytes(8, "big")
    return bytes(data)


def wide_silence_flac() -> bytes:
    """4 s of silence at 192 kHz in 8 channels: a few KB that decode to 24 MB of float32."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((4 * 192_000, 8), np.int16), 192_000, format="FLAC")
    return buffer.getvalue()


def noise(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1).astype(
        np.float32
    )


# -- config ------------------------------------------------------------------------------


def test_config_file_resolves_paths_hashes_and_limits(tmp_path):
    (tmp_path / "keys").mkdir()
    config_file = tmp_path / "serve.yaml"
    config_file.write_text(
        f"""
host: 0.0.0.0
port: 9000
docs: false
api_keys:
  - id: moderation
    sha256: {token_digest("t1")}
    scopes: [scan]
limits:
  max_upload_bytes: 1000
  max_duration_s: 30
  queue_size: 0
  rate_limit_per_minute: 0
guard:
  policy: audit-strict
  keys: {{org: keys/org.key}}
  detector: false
  public_backends: [perth]
  audit_log: audit.jsonl
  audit_signing_key: audit.pem
  generator_policy: generator-output
"""
    )
    config = load_config(config_file, environ={"AUDIOGUARD_API_KEYS": "ci:s3cret:scan+embed"})
    # Files the config names must exist before any worker starts (each would print a traceback).
    with pytest.raises(ConfigError, match=r"guard\.keys\.org: .*org\.key does not exist"):
        config.validate()
    (tmp_path / "keys").mkdir(exist_ok=True)
    (tmp_path / "keys" / "org.key").write_text("key")
    with pytest.raises(ConfigError, match=r"guard\.audit_signing_key: .*audit\.pem does not"):
        config.validate()
    (tmp_path / "audit.pem").write_text("pem")
    config.validate()
    assert (config.host, config.port, config.docs) == ("0.0.0.0", 9000, False)
    assert [k.id for k in config.api_keys] == ["moderation", "ci"]
    assert config.api_keys[1].sha256 == hashlib.sha256(b"s3cret").hexdigest()
    assert config.api_keys[1].scopes == ("scan", "embed")
    assert config.keys == {"org": tmp_path / "keys" / "org.key"}
    assert config.audit_log == tmp_path / "audit.jsonl"
    assert config.audit_signing_key == tmp_path / "audit.pem"
    assert config.generator_policy == "generator-output"
    assert (config.max_upload_bytes, config.max_duration_s, config.queue_size) == (1000, 30.0, 0)
    assert (config.policy, config.use_detector, config.public_backends) == (
        "audit-strict",
        False,
        ("perth",),
    )
    assert ServerConfig.from_json(config.to_json()) == config
    assert "s3cret" not in config.to_json()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("limits: {max_upload_byte: 5}", "unknown field 'max_upload_byte'"),
        ("port: true", "port must be"),
        ("api_keys: [{id: a, sha256: abc, scopes: [scan]}]", "64-hex-digit"),
        (f"api_keys: [{{id: a, sha256: {'a' * 64}, scopes: [admin]}}]", "scope 'admin'"),
        ("guard: {keys: {'../x': k.key}}", "not a usable id"),
        ("[1, 2", "not valid YAML"),
    ],
)
def test_config_errors_name_the_field(tmp_path, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as err:
        load_config(path, environ={}).validate()
    assert problem in str(err.value)


def test_a_key_id_is_its_file_stem():
    config = ServerConfig(insecure_no_auth=True, keys={"org": Path("/keys/other.key")})
    with pytest.raises(ConfigError, match="guard.keys: the key id 'org' must be"):
        config.validate()


def test_env_keys_parse_and_reject_garbage():
    keys = parse_env_keys("ci:s3cret:scan+embed, mod:a:b:c:scan")
    assert [(k.id, k.scopes) for k in keys] == [("ci", ("scan", "embed")), ("mod", ("scan",))]
    assert keys[1].sha256 == token_digest("a:b:c")  # a token may contain colons
    for bad in ("justatoken", "ci::scan", "ci:tok:", "ci:tok:delete"):
        with pytest.raises(ConfigError):
            parse_env_keys(bad)


def test_no_keys_is_refused_except_on_loopback_with_the_flag():
    with pytest.raises(ConfigError, match="no API keys"):
        ServerConfig().validate()
    ServerConfig(insecure_no_auth=True, host="127.0.0.1").validate()
    ServerConfig(insecure_no_auth=True, host="::1").validate()
    with pytest.raises(ConfigError, match="loopback"):
        ServerConfig(insecure_no_auth=True, host="0.0.0.0").validate()


def test_serve_command_refuses_to_start_without_keys(monkeypatch):
    monkeypatch.delenv("AUDIOGUARD_API_KEYS", raising=False)
    runner = CliRunner()
    result = runner.invoke(cli, ["serve"])
    assert result.exit_code != 0
    assert "no API keys" in str(result.exception)
    result = runner.invoke(cli, ["serve", "--insecure-no-auth", "--host", "0.0.0.0"])
    assert result.exit_code != 0
    assert "loopback" in str(result.exception)


def test_new_api_key_prints_a_token_whose_digest_is_the_entry():
    result = CliRunner().invoke(cli, ["serve", "--new-api-key", "tts", "--scopes", "scan+embed"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    token = lines[0].rsplit(" ", 1)[1]
    digest = next(line.split(": ")[1] for line in lines if "sha256:" in line)
    assert digest == token_digest(token)
    assert "scopes: [scan, embed]" in result.output
    assert len(token) > 40


# -- auth and limits ---------------------------------------------------------------------


def test_authenticator_and_scopes():
    authenticator = Authenticator(api_keys())
    for header in (None, "", "Basic abc", "Bearer ", "Bearer wrong"):
        with pytest.raises(ApiError) as err:
            authenticator.authenticate(header)
        assert err.value.status == 401
        assert err.value.headers["WWW-Authenticate"].startswith("Bearer")
    who = authenticator.authenticate(f"Bearer {SCAN_TOKEN}")
    assert who.id == "moderation"
    require_scope(who, "scan")
    with pytest.raises(ApiError) as err:
        require_scope(who, "embed")
    assert (err.value.status, err.value.code) == (403, "forbidden")
    assert Authenticator((), allow_anonymous=True).authenticate(None).id == "anonymous"


def test_rate_limiter_bursts_then_refills_per_key():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [None, None, None]
    wait = limiter.acquire("a")
    assert wait == pytest.approx(1.0)
    assert limiter.acquire("b") is None  # another key has its own bucket
    now[0] = 0.5
    assert limiter.acquire("a") == pytest.approx(0.5)
    now[0] = 1.0
    assert limiter.acquire("a") is None
    now[0] = 100.0  # refills up to the burst, no further
    assert [limiter.acquire("a") is None for _ in range(4)] == [True, True, True, False]
    assert RateLimiter(per_minute=0, burst=1).acquire("a") is None


def test_admission_gate_counts_and_refuses_at_capacity():
    depths = []
    gate = AdmissionGate(2, on_change=depths.append)
    assert gate.try_enter() and gate.try_enter()
    assert not gate.try_enter()
    gate.leave()
    assert gate.try_enter()
    assert depths == [1, 2, 1, 2]


def test_one_key_holds_at_most_its_share_of_the_places():
    # Six slow uploads from one key held every place and every other key got 503.
    gate = AdmissionGate(6, per_holder=3)
    assert all(gate.try_enter("greedy") for _ in range(3))
    assert not gate.try_enter("greedy")
    assert gate.try_enter("other") and gate.try_enter("third")
    gate.leave("greedy")
    assert gate.try_enter("greedy")
    assert gate.try_enter("fourth") and gate.depth == 6
    assert not gate.try_enter("fifth")


def test_the_service_gives_one_key_half_the_places_when_it_has_several(service_dir):
    several = create_app(make_config(service_dir, queue_size=5, inference_threads=2))
    with TestClient(several):
        assert several.state.service.gate.per_holder == 3  # of 7: never more than half
    single = make_config(service_dir, queue_size=5, inference_threads=2, api_keys=api_keys()[:1])
    alone = create_app(single)
    with TestClient(alone):
        assert alone.state.service.gate.per_holder == 7


# -- the app in process ------------------------------------------------------------------


@pytest.fixture(scope="module")
def service_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("service")
    write_key(folder / "org.key")
    return folder


def make_config(folder: Path, **overrides) -> ServerConfig:
    values = {
        "api_keys": api_keys(),
        "use_detector": False,
        "public_backends": (),
        "keys": {"org": folder / "org.key"},
        "audit_log": folder / "audit.jsonl",
        "tmp_dir": folder / "tmp",
        "max_upload_bytes": 2_000_000,
        "max_duration_s": 60.0,
    }
    return ServerConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def client(service_dir):
    app = create_app(make_config(service_dir))
    with TestClient(app) as test_client:
        yield test_client


def uploads_left(client) -> list[Path]:
    return list(client.app.state.service.uploads.path.iterdir())


def test_health_readiness_and_policies(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    # a load balancer's HEAD probe got 405 and marked the worker down
    assert client.head("/healthz").status_code == client.head("/readyz").status_code == 200
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["keys"] == ["org"]
    assert "upload-screening" in ready["policies"]
    policies = client.get("/v1/policies", headers=auth(SCAN_TOKEN)).json()
    assert policies["default"] == "upload-screening"
    names = {p["name"]: p for p in policies["policies"]}
    assert {"upload-screening", "generator-output", "audit-strict"} <= set(names)
    assert all(r["id"] and r["action"] for r in names["upload-screening"]["rules"])


def test_scan_answers_with_the_cli_fields(client, samples_dir):
    data = (samples_dir / SPEECH).read_bytes()
    response = client.post(
        "/v1/scan",
        headers=auth(SCAN_TOKEN),
        files={"file": ("clip.flac", data)},
        data={"meta": json.dumps({"uploader": "u1"})},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["path"] == "clip.flac"
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["decision"] in ("allow", "label", "review", "block")
    assert body["policy"]["name"] == "upload-screening"
    assert body["duration"] == pytest.approx(sf.info(samples_dir / SPEECH).duration, abs=0.01)
    (keyed,) = body["watermarks"]
    assert (keyed["backend"], keyed["key_id"], keyed["detected"]) == ("keyed", "org", False)
    assert {"matched_rules", "synthetic_probability", "segments", "message"} <= set(body)
    assert uploads_left(client) == []


def test_scan_with_another_policy_and_bad_fields(client):
    clip = wav_bytes(noise(1.0), 16000)
    response = client.post(
        "/v1/scan",
        headers=auth(SCAN_TOKEN),
        files={"file": ("a.wav", clip)},
        data={"policy": "audit-strict"},
    )
    assert response.status_code == 200, response.text
    # audit-strict sends anything without a detector score to review
    assert response.json()["policy"]["name"] == "audit-strict"
    assert response.json()["decision"] == "review"
    for data, code in (
        ({"policy": "no-such-policy"}, "unknown_policy"),
        ({"meta": "{not json"}, "bad_request"),
        ({"meta": "[1, 2]"}, "bad_request"),
        ({"meta": '{"a": ' * 5000 + "1" + "}" * 5000}, "bad_request"),  # was a 500
        ({"meta": '{"a": ' * 40 + "1" + "}" * 40}, "bad_request"),
        # these were 500s, after the models had run: the audit log could not write them
        ({"meta": '{"a": NaN}'}, "bad_request"),
        ({"meta": '{"a": 1e999}'}, "bad_request"),
        ({"meta": '{"a": "\\ud800"}'}, "bad_request"),
        ({"meta": '{"a": ' + "9" * 5000 + "}"}, "bad_request"),
        ({"colour": "red"}, "bad_request"),
    ):
        response = client.post(
            "/v1/scan", headers=auth(SCAN_TOKEN), files={"file": ("a.wav", clip)}, data=data
        )
        assert response.status_code == 400, data
        assert response.json()["error"]["code"] == code
    no_file = client.post("/v1/scan", headers=auth(SCAN_TOKEN), data={"policy": "x"})
    assert no_file.status_code in (400, 415)
    assert "error" in no_file.json()
    assert uploads_left(client) == []


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("notes.wav", b"this is a text file, not audio\n" * 20, 415, "unsupported_media_type"),
        ("cut.wav", wav_bytes(noise(1.0), 16000)[:30], 415, "unsupported_media_type"),
        ("nan.wav", wav_bytes(np.full(16000, np.nan, np.float32), 16000, "FLOAT"), 422, None),
        ("chans.wav", wav_header(8000, 1000, 16, 16000) + bytes(16000), 422, "undecodable"),
        ("rate.wav", wav_header(2_000_000_000, 1, 16, 16000) + bytes(16000), 422, None),
        ("claim.flac", flac_claiming_hours(), 413, "too_long"),
        ("wide.flac", wide_silence_flac(), 413, "too_long"),  # decoded in full before
        ("long.wav", wav_bytes(np.zeros(8000 * 61, np.float32), 8000), 413, "too_long"),
        ("empty.wav", b"", 422, "undecodable"),
        ("silent.wav", wav_bytes(np.zeros(0, np.float32), 16000), 422, "undecodable"),  # was 415
    ],
)
def test_hostile_files_get_a_status_and_a_sentence(client, name, data, status, code):
    response = client.post("/v1/scan", headers=auth(SCAN_TOKEN), files={"file": (name, data)})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if code:
        assert error["code"] == code
    assert error["message"].startswith(f"{name}: ")
    assert "Traceback" not in response.text and "/tmp" not in error["message"]
    assert uploads_left(client) == []


def test_truncated_wav_is_scanned_for_what_it_holds(client):
    whole = wav_bytes(noise(2.0), 16000)
    response = client.post(
        "/v1/scan", headers=auth(SCAN_TOKEN), files={"file": ("half.wav", whole[: len(whole) // 2])}
    )
    assert response.status_code == 200, response.text
    assert response.json()["duration"] == pytest.approx(1.0, abs=0.01)


def test_huge_wav_claims_are_clamped_to_the_data(client):
    lying = wav_header(8000, 1, 16, 0xFFFFFFF0) + bytes(16000)
    response = client.post("/v1/scan", headers=auth(SCAN_TOKEN), files={"file": ("l.wav", lying)})
    assert response.status_code == 200, response.text
    assert response.json()["duration"] == pytest.approx(1.0)


def test_size_limit_by_declared_length_and_by_counting(client):
    big = bytes(2_100_000)
    response = client.post("/v1/scan", headers=auth(SCAN_TOKEN), files={"file": ("big.wav", big)})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"

    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="z.wav"\r\n\r\n'
        for _ in range(40):
            yield bytes(65536)

    response = client.post(
        "/v1/scan",
        headers={**auth(SCAN_TOKEN), "Content-Type": "multipart/form-data; boundary=b"},
        content=chunks(),
    )
    assert response.status_code == 413
    assert uploads_left(client) == []


def test_a_body_cut_before_the_closing_boundary_is_refused(client):
    clip = wav_bytes(noise(1.0), 16000)
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + clip
    response = client.post(
        "/v1/scan",
        headers={**auth(SCAN_TOKEN), "Content-Type": "multipart/form-data; boundary=b"},
        content=body,
    )
    assert response.status_code == 400
    assert "closing boundary" in response.json()["error"]["message"]
    whole = body + b"\r\n--b--\r\n"
    response = client.post(
        "/v1/scan",
        headers={**auth(SCAN_TOKEN), "Content-Type": "multipart/form-data; boundary=b"},
        content=whole,
    )
    assert response.status_code == 200
    assert uploads_left(client) == []


def test_not_multipart_and_no_key(client):
    response = client.post("/v1/scan", headers=auth(SCAN_TOKEN), content=b"RIFF....")
    assert response.status_code == 415
    for headers in ({}, auth("wrong")):
        response = client.post("/v1/scan", headers=headers, files={"file": ("a.wav", b"x")})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/policies").status_code == 401


def embed_speech(client, samples_dir, filename: str):
    """POST the speech sample to the embed endpoint under ``filename``; fail unless it is 200."""
    response = client.post(
        "/v1/watermark/embed",
        headers=auth(EMBED_TOKEN),
        files={"file": (filename, (samples_dir / SPEECH).read_bytes())},
        data={"payload": "2026112A", "key_id": "org"},
    )
    assert response.status_code == 200, response.text
    return response


def test_embed_returns_marked_audio_in_the_upload_format(client, samples_dir):
    source = samples_dir / SPEECH
    response = embed_speech(client, samples_dir, "voice.flac")
    assert response.headers["content-type"] == "audio/flac"
    assert response.headers["x-audioguard-verified"] == "true"
    assert response.headers["x-audioguard-payload"] == "2026112a"
    assert float(response.headers["x-audioguard-p-value"]) < 1e-6
    assert response.headers["x-audioguard-key-id"] == "org"
    assert response.headers["x-audioguard-decision"] == "allow"
    assert "voice.marked.flac" in response.headers["content-disposition"]
    marked, rate = sf.read(io.BytesIO(response.content))
    original = sf.info(source)
    assert (rate, len(marked)) == (original.samplerate, original.frames)
    assert response.content != source.read_bytes()

    detected = client.post(
        "/v1/watermark/detect",
        headers=auth(SCAN_TOKEN),
        files={"file": ("voice.marked.flac", response.content)},
    )
    assert detected.status_code == 200
    (finding,) = detected.json()["watermarks"]
    assert (finding["detected"], finding["payload"], finding["key_id"]) == (True, "2026112a", "org")
    assert uploads_left(client) == []


@pytest.mark.parametrize("name", ["voice.bin", "voice.mp3", "voice.opus"])
def test_embed_keeps_the_uploads_real_format_whatever_it_is_called(client, samples_dir, name):
    # A FLAC named .mp3 or .opus came back lossy, in the format its name claimed.
    source = samples_dir / SPEECH
    response = embed_speech(client, samples_dir, name)
    assert sf.info(io.BytesIO(response.content)).format == sf.info(source).format
    assert 'filename="voice.marked.flac"' in response.headers["content-disposition"]
    assert uploads_left(client) == []


def test_embed_needs_the_scope_a_payload_and_a_known_key(client):
    clip = wav_bytes(noise(2.0), 16000)
    files = {"file": ("a.wav", clip)}
    response = client.post(
        "/v1/watermark/embed", headers=auth(SCAN_TOKEN), files=files, data={"payload": "ab"}
    )
    assert response.status_code == 403
    assert "embed" in response.json()["error"]["message"]
    for data, code in (
        ({"payload": "xyz"}, "bad_request"),
        ({"payload": "123456789"}, "bad_request"),
        ({}, "bad_request"),
        ({"payload": "ab", "key_id": "other"}, "unknown_key"),
    ):
        response = client.post(
            "/v1/watermark/embed", headers=auth(EMBED_TOKEN), files=files, data=data
        )
        assert response.status_code == 400, data
        assert response.json()["error"]["code"] == code


def test_detect_without_a_detector_says_so(client):
    response = client.post("/v1/detect", headers=auth(SCAN_TOKEN), files={"file": ("a.wav", b"x")})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "detector_disabled"
    assert "/v1/detect" not in client.get("/openapi.json").json()["paths"]


def test_every_decision_is_in_the_audit_log(client, service_dir):
    before = verify_log(service_dir / "audit.jsonl").records
    clip = wav_bytes(noise(1.0, seed=3), 16000)
    response = client.post("/v1/scan", headers=auth(SCAN_TOKEN), files={"file": ("a.wav", clip)})
    assert response.status_code == 200
    check = verify_log(service_dir / "audit.jsonl")
    assert check.ok, check.problem
    assert check.records == before + 1
    last = json.loads((service_dir / "audit.jsonl").read_text().splitlines()[-1])
    assert last["sha256"] == hashlib.sha256(clip).hexdigest()


def test_metrics_count_requests_decisions_and_rejections(client):
    client.post("/v1/scan", headers=auth("nope"), files={"file": ("a.wav", b"x")})
    clip = wav_bytes(noise(1.0, seed=4), 16000)
    client.post("/v1/scan", headers=auth(SCAN_TOKEN), files={"file": ("a.wav", clip)})
    text = client.get("/metrics").text
    assert 'audioguard_rejected_total{reason="unauthorized"}' in text
    assert 'audioguard_requests_total{endpoint="/v1/scan",status="200"}' in text
    assert 'audioguard_decisions_total{action="allow",policy="upload-screening"}' in text
    assert "audioguard_request_duration_seconds_bucket" in text
    assert "audioguard_queue_depth 0.0" in text
    assert "audioguard_queue_capacity" in text


def test_errors_are_json_everywhere(client):
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"
    assert client.get("/v1/scan").json()["error"]["code"] == "method_not_allowed"


def test_openapi_and_review_page_served(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/scan", "/v1/watermark/detect", "/v1/watermark/embed"} <= set(schema["paths"])
    body = schema["paths"]["/v1/scan"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["required"] == ["file"]
    page = client.get("/")
    assert page.status_code == 200
    assert "review.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/review.js").status_code == 200


def test_docs_switch_off(service_dir):
    app = create_app(make_config(service_dir, docs=False))
    with TestClient(app) as off:
        assert off.get("/openapi.json").status_code == 404
        assert off.get("/docs").status_code == 404
        assert off.get("/healthz").status_code == 200
