"""The audit log: hash chain, tampering named by kind, signatures, torn tails, many writers."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policies import (
    AuditLog,
    AuditLogError,
    generate_signing_key,
    head_hash,
    load_public_key,
    load_signing_key,
    verify_log,
)
from policies.audit_log import GENESIS, record_hash


def decision(i: int) -> dict:
    return {
        "sha256": f"{i:064x}",
        "decision": "block" if i % 2 else "allow",
        "matched_rules": ["undisclosed-synthetic-voice"] if i % 2 else [],
        "facts": {"synthetic_probability": i / 10, "meta": {"uploader": "alice"}},
        "model": "compact-ast-v1+head-v1",
        "policy": {"name": "upload-screening", "version": 1},
    }


@pytest.fixture()
def log_path(tmp_path):
    return tmp_path / "audit.jsonl"


def fill(path, n: int = 6, key: Ed25519PrivateKey | None = None) -> list[dict]:
    log = AuditLog(path, signing_key=key)
    return [log.append(decision(i)) for i in range(n)]


def lines(path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def write_lines(path, new_lines: list[str]) -> None:
    path.write_text("".join(new_lines))


def forge(prev: dict, seq: int, body: dict) -> str:
    """A record made the way a writer makes one, by someone without the signing key."""
    record = {"seq": seq, "time": prev["time"], "prev": prev["hash"], **body}
    record["hash"] = record_hash(record)
    return json.dumps(record) + "\n"


# --- writing ---------------------------------------------------------------------------------


def test_records_chain_and_carry_what_the_caller_passed(log_path):
    stored = fill(log_path, 3)
    assert [r["seq"] for r in stored] == [1, 2, 3]
    assert stored[0]["prev"] == GENESIS
    assert stored[1]["prev"] == stored[0]["hash"] and stored[2]["prev"] == stored[1]["hash"]
    assert stored[2]["time"].endswith("Z")
    on_disk = [json.loads(line) for line in lines(log_path)]
    assert on_disk == stored
    assert on_disk[1]["facts"] == decision(1)["facts"]
    assert all(record_hash(r) == r["hash"] for r in on_disk)
    assert head_hash(log_path) == stored[-1]["hash"]


def test_head_hash_of_a_missing_log_is_none(log_path):
    assert head_hash(log_path) is None


def test_a_log_that_cannot_be_written_is_refused_at_once_not_per_record(tmp_path):
    with pytest.raises(AuditLogError, match="missing does not exist"):
        AuditLog(tmp_path / "missing" / "audit.jsonl")
    with pytest.raises(AuditLogError, match="it is a folder"):
        AuditLog(tmp_path)
    # A lock file that cannot be created used to look like a lock held by another writer,
    # so every append waited out the whole timeout before failing.
    (tmp_path / "audit.jsonl.lock").mkdir()
    with pytest.raises(AuditLogError, match="its lock file .* cannot be created"):
        AuditLog(tmp_path / "audit.jsonl", lock_timeout=0.1)
    assert not (tmp_path / "audit.jsonl").exists()


def test_a_new_writer_continues_the_chain(log_path):
    fill(log_path, 2)
    third = AuditLog(log_path).append(decision(9))
    assert third["seq"] == 3
    assert verify_log(log_path).ok


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"hash": "x"}, "the log sets hash"),
        ({"seq": 7, "time": "now"}, "the log sets seq, time"),
        ({"score": float("nan")}, "not plain JSON"),
        ({"when": object()}, "not plain JSON"),
    ],
)
def test_records_the_log_cannot_keep_honestly_are_refused(log_path, record, match):
    with pytest.raises(AuditLogError, match=match):
        AuditLog(log_path).append(record)
    assert not log_path.exists()


# --- verification: each kind of tampering is named at its line -------------------------------


def test_an_untouched_log_verifies(log_path):
    stored = fill(log_path)
    result = verify_log(log_path)
    assert (result.ok, result.records, result.first_bad) == (True, 6, None)
    assert result.head_hash == stored[-1]["hash"]


def test_an_edited_record_is_named(log_path):
    fill(log_path)
    text = lines(log_path)
    edited = text[2].replace('"decision":"allow"', '"decision":"block"')
    assert edited != text[2]
    text[2] = edited
    write_lines(log_path, text)
    result = verify_log(log_path)
    assert (result.ok, result.first_bad, result.records) == (False, 3, 2)
    assert "line 3 was edited" in result.problem


def test_a_dropped_record_is_named(log_path):
    fill(log_path)
    text = lines(log_path)
    del text[2]
    write_lines(log_path, text)
    result = verify_log(log_path)
    assert (result.ok, result.first_bad) == (False, 3)
    assert "record 3 missing before line 3: dropped" in result.problem


def test_an_inserted_record_with_a_valid_hash_is_named(log_path):
    stored = fill(log_path)
    text = lines(log_path)
    text.insert(2, forge(stored[1], 3, decision(42)))
    write_lines(log_path, text)
    result = verify_log(log_path)
    assert (result.ok, result.first_bad, result.records) == (False, 3, 2)
    assert "line 3 was inserted" in result.problem
    assert result.head_hash == stored[1]["hash"]


def test_an_inserted_first_record_is_named(log_path):
    stored = fill(log_path, 3)
    genesis = {"hash": GENESIS, "time": stored[0]["time"]}
    text = lines(log_path)
    write_lines(log_path, [forge(genesis, 1, decision(42)), *text])
    result = verify_log(log_path)
    assert (result.first_bad, result.records, result.head_hash) == (1, 0, None)
    assert "line 1 was inserted: line 2 (record 1) links to the start of the log" in result.problem


def test_an_inserted_copy_is_named(log_path):
    fill(log_path)
    text = lines(log_path)
    text.insert(4, text[1])
    write_lines(log_path, text)
    result = verify_log(log_path)
    assert (result.ok, result.first_bad) == (False, 5)
    assert "line 5 repeats line 2" in result.problem


def test_reordered_records_are_named(log_path):
    fill(log_path)
    text = lines(log_path)
    text[2], text[3] = text[3], text[2]
    write_lines(log_path, text)
    result = verify_log(log_path)
    assert (result.ok, result.first_bad) == (False, 3)
    assert "belongs after line 4: records were reordered" in result.problem


def test_a_rewritten_record_breaks_the_next_link(log_path):
    stored = fill(log_path)
    text = lines(log_path)
    text[2] = forge(stored[1], 3, {**decision(2), "decision": "allow"})
    write_lines(log_path, text)
    result = verify_log(log_path)
    assert (result.ok, result.first_bad) == (False, 4)
    assert "line 4 does not follow line 3" in result.problem


def test_an_anchor_catches_records_cut_off_the_end(log_path):
    stored = fill(log_path)
    assert verify_log(log_path, anchor=stored[-1]["hash"]).ok
    assert verify_log(log_path, anchor=stored[2]["hash"]).ok  # the log may have grown since
    write_lines(log_path, lines(log_path)[:-1])
    assert verify_log(log_path).ok  # a chain alone cannot see its end was cut
    result = verify_log(log_path, anchor=stored[-1]["hash"])
    assert (result.ok, result.first_bad) == (False, None)
    assert "cut off its end" in result.problem


def test_a_line_that_is_not_a_record_is_named(log_path):
    fill(log_path, 3)
    text = lines(log_path)
    text.insert(1, '{"note": "hello"}\n')
    write_lines(log_path, text)
    result = verify_log(log_path)
    assert (result.first_bad, result.torn) == (2, False)
    assert "not an audit record" in result.problem


@pytest.mark.parametrize("line", ["[1, 2]", '"hello"', "null", "3"])
def test_a_json_line_that_is_not_an_object_is_named(log_path, line):
    fill(log_path, 3)
    text = lines(log_path)
    text.insert(1, line + "\n")
    write_lines(log_path, text)
    result = verify_log(log_path)
    assert (result.first_bad, result.torn) == (2, False)
    assert result.problem == "line 2 is not a JSON object: it was edited or inserted"


# --- signatures --------------------------------------------------------------------------------


@pytest.fixture()
def keys(tmp_path):
    public_path = generate_signing_key(tmp_path / "audit.key")
    return load_signing_key(tmp_path / "audit.key"), load_public_key(public_path)


def test_signed_records_verify_with_the_public_key(log_path, keys):
    private, public = keys
    stored = fill(log_path, key=private)
    assert all(len(r["signature"]) == 128 for r in stored)
    result = verify_log(log_path, public_key=public)
    assert result.ok and result.signatures_checked


def test_a_bad_signature_is_named(log_path, keys):
    private, public = keys
    fill(log_path, key=private)
    text = lines(log_path)
    record = json.loads(text[3])
    record["signature"] = ("0" if record["signature"][0] != "0" else "1") + record["signature"][1:]
    text[3] = json.dumps(record) + "\n"
    write_lines(log_path, text)
    assert verify_log(log_path).ok  # the signature is outside the hash
    result = verify_log(log_path, public_key=public)
    assert (result.ok, result.first_bad) == (False, 4)
    assert "signature does not verify" in result.problem


def test_a_rewritten_signed_record_is_named_at_its_own_line(log_path, keys):
    private, public = keys
    stored = fill(log_path, key=private)
    text = lines(log_path)
    forged = json.loads(forge(stored[1], 3, {**decision(2), "signer": stored[2]["signer"]}))
    forged["signature"] = stored[2]["signature"]
    text[2] = json.dumps(forged) + "\n"
    write_lines(log_path, text)
    result = verify_log(log_path, public_key=public)
    assert (result.ok, result.first_bad) == (False, 3)


def test_another_key_or_no_signature_fails_verification(log_path, keys, tmp_path):
    _, public = keys
    fill(log_path, key=Ed25519PrivateKey.generate())
    assert "signed by key" in verify_log(log_path, public_key=public).problem
    unsigned = tmp_path / "unsigned.jsonl"
    fill(unsigned, 2)
    result = verify_log(unsigned, public_key=public)
    assert (result.first_bad, result.problem) == (
        1,
        "line 1: not signed, but a public key was given",
    )


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path, keys):
    mode = stat.S_IMODE(os.stat(tmp_path / "audit.key").st_mode)
    assert mode == 0o600
    with pytest.raises(AuditLogError, match="refusing to overwrite"):
        generate_signing_key(tmp_path / "audit.key")
    with pytest.raises(AuditLogError, match="not a PEM public key"):
        load_public_key(tmp_path / "audit.key")


# --- torn tails and crashes -------------------------------------------------------------------


def test_a_crash_mid_write_leaves_earlier_records_intact_and_is_named(log_path):
    stored = fill(log_path, 4)
    with log_path.open("ab") as handle:  # what a writer killed halfway through leaves
        handle.write(b'{"seq":5,"time":"2026-11-26T00:00:00Z","prev":"')
    result = verify_log(log_path)
    assert (result.ok, result.torn, result.first_bad, result.records) == (False, True, 5, 4)
    assert "line 5 is torn" in result.problem
    assert head_hash(log_path) == stored[-1]["hash"]


def test_the_next_append_repairs_a_torn_tail_and_records_it(log_path, keys):
    private, public = keys
    fill(log_path, 3, key=private)
    torn = b'{"seq":4,"decision":"blo'
    with log_path.open("ab") as handle:
        handle.write(torn)
    appended = AuditLog(log_path, signing_key=private).append(decision(7))
    records = [json.loads(line) for line in lines(log_path)]
    assert len(records) == 5
    note = records[3]
    assert note["event"] == "repair" and note["discarded_bytes"] == len(torn)
    assert records[4] == appended and appended["seq"] == 5
    result = verify_log(log_path, public_key=public)
    assert (result.ok, result.repairs, result.records) == (True, 1, 5)


def test_a_complete_last_record_missing_its_newline_is_kept(log_path):
    fill(log_path, 3)
    log_path.write_bytes(log_path.read_bytes().rstrip(b"\n"))
    assert verify_log(log_path).ok
    AuditLog(log_path).append(decision(3))
    result = verify_log(log_path)
    assert (result.ok, result.records, result.repairs) == (True, 4, 0)


def test_appending_to_a_log_whose_last_line_was_tampered_with_is_refused(log_path):
    fill(log_path, 3)
    text = lines(log_path)
    text[-1] = text[-1].replace('"decision":"allow"', '"decision":"block"')
    write_lines(log_path, text)
    before = log_path.read_bytes()
    with pytest.raises(AuditLogError, match="refusing to append"):
        AuditLog(log_path).append(decision(4))
    assert log_path.read_bytes() == before


# --- concurrent writers ----------------------------------------------------------------------

WRITERS, PER_WRITER = 4, 50


def _writer(path: str, worker: int, start: multiprocessing.synchronize.Barrier) -> None:
    log = AuditLog(path)
    start.wait()  # all writers begin together, so appends contend for the lock
    for i in range(PER_WRITER):
        log.append({"worker": worker, "i": i})


def test_concurrent_writers_lose_nothing_and_keep_the_chain(log_path):
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(WRITERS)
    processes = [
        context.Process(target=_writer, args=(str(log_path), w, start)) for w in range(WRITERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    result = verify_log(log_path)
    assert result.ok, result.problem
    assert result.records == WRITERS * PER_WRITER
    records = [json.loads(line) for line in lines(log_path)]
    assert sorted((r["worker"], r["i"]) for r in records) == [
        (w, i) for w in range(WRITERS) for i in range(PER_WRITER)
    ]
