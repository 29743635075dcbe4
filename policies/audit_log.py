"""An append-only, hash-chained JSONL audit log of decisions, optionally Ed25519-signed.

Each line is one JSON record. Besides what the caller passes (input sha256, decision, matched
rules, facts, model and policy versions), the log adds:

- ``seq``: 1, 2, 3, ... (the line number), so a dropped or reordered record can be named;
- ``time``: UTC, ISO 8601;
- ``prev``: the previous record's ``hash`` (64 zeros for the first record);
- ``hash``: sha256 of the record's canonical JSON (sorted keys, no spaces, UTF-8) without
  ``hash`` and ``signature``;
- ``signer`` and ``signature`` (with a signing key): the key id and the Ed25519 signature of
  the ``hash`` string. Without signatures anyone who can write the file can rewrite the whole
  chain after an edit; with them, only the key holder can. A chain cannot show that records
  were cut off its end: keep the head hash somewhere else (the auditor's report prints it)
  and pass it as ``anchor`` to :func:`verify_log`.

Writers are safe together and across crashes: every append takes a file lock (``LOG.lock``),
reads the last record, writes the new line with a single ``write`` on an ``O_APPEND``
descriptor and ``fsync``\\ s before releasing the lock. A crash can therefore leave at most one
*torn* line at the end: bytes without a final newline. Records before it are never touched.

Torn tails: :func:`verify_log` reports one (``ok`` false, ``torn`` true, the line named) because
the log is not in a clean state, while every record before it verifies. The next append repairs
it rather than refusing, since a platform must keep logging after a crash: it truncates the
torn bytes and first appends a ``"event": "repair"`` record that keeps their length and sha256,
so the removal itself is part of the signed chain. A complete, valid last record that merely
lacks its newline (an editor stripped it) is completed, not removed. A last line that is
complete but not a valid record is tampering, not a crash: appends refuse until a person looks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import filelock
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS = "0" * 64
RESERVED_KEYS = ("seq", "time", "prev", "hash", "signer", "signature")
LOCK_TIMEOUT_S = 30.0
_READ_BLOCK = 64 * 1024


class AuditLogError(ValueError):
    """The log cannot be written or read as an audit log (one sentence naming the file)."""


@dataclass(frozen=True)
class VerifyResult:
    """``ok`` only when every record verifies; otherwise ``first_bad`` is the first bad line.

    ``records`` counts the records that verified before the first problem. ``first_bad`` is
    None when the problem is not one line (an anchor hash missing from the log).
    """

    ok: bool
    records: int
    first_bad: int | None
    problem: str
    head_hash: str | None
    torn: bool = False
    repairs: int = 0
    signatures_checked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "first_bad": self.first_bad,
            "problem": self.problem,
            "head_hash": self.head_hash,
            "torn": self.torn,
            "repairs": self.repairs,
            "signatures_checked": self.signatures_checked,
        }


def canonical_json(record: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed: sorted keys, no whitespace, UTF-8, no NaN."""
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k not in ("hash", "signature")}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a signing key: the start of the sha256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class AuditLog:
    """Appends decision records to ``path`` (created on first append)."""

    def __init__(
        self,
        path: str | Path,
        signing_key: Ed25519PrivateKey | None = None,
        lock_timeout: float = LOCK_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self.signing_key = signing_key
        _check_appendable(self.path)
        self._lock = filelock.FileLock(_lock_path(self.path), timeout=lock_timeout)

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record and return it as stored (with seq, time, prev, hash, signature)."""
        clash = sorted(set(record) & set(RESERVED_KEYS))
        if clash:
            raise AuditLogError(f"{self.path}: the log sets {', '.join(clash)}; do not pass them")
        try:
            canonical_json(record)
        except (TypeError, ValueError) as exc:
            raise AuditLogError(f"{self.path}: record is not plain JSON data ({exc})") from None
        try:
            with self._lock:
                return self._append_locked(record)
        except filelock.Timeout:
            raise AuditLogError(
                f"{self.path}: another writer held the log's lock for over "
                f"{self._lock.timeout:.0f} s"
            ) from None

    def _append_locked(self, record: Mapping[str, Any]) -> dict[str, Any]:
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            last, torn = _read_tail(fd)
            previous = _parse_record(last) if last is not None else None
            if last is not None and previous is None:
                raise AuditLogError(
                    f"{self.path}: the last line is not a valid audit record; refusing to "
                    "append (run `audioguard audit verify`)"
                )
            lines: list[dict[str, Any]] = []
            if torn:
                completed = _parse_record(torn)
                if completed is not None:
                    _write_all(fd, b"\n")  # a whole record that only lost its newline
                    previous = completed
                else:
                    os.ftruncate(fd, os.fstat(fd).st_size - len(torn))
                    note = {
                        "event": "repair",
                        "note": "removed a torn record (an incomplete last line left by a "
                        "writer that stopped mid-write)",
                        "discarded_bytes": len(torn),
                        "discarded_sha256": hashlib.sha256(torn).hexdigest(),
                    }
                    previous = self._seal(note, previous)
                    lines.append(previous)
            stored = self._seal(record, previous)
            lines.append(stored)
            _write_all(fd, b"".join(_line(r) for r in lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.path.parent)
        return stored

    def _seal(self, record: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict:
        sealed: dict[str, Any] = {
            "seq": previous["seq"] + 1 if previous else 1,
            "time": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "prev": previous["hash"] if previous else GENESIS,
            **record,
        }
        if self.signing_key is not None:
            sealed["signer"] = key_id(self.signing_key.public_key())
        sealed["hash"] = record_hash(sealed)
        if self.signing_key is not None:
            sealed["signature"] = self.signing_key.sign(sealed["hash"].encode("ascii")).hex()
        return sealed


def head_hash(path: str | Path) -> str | None:
    """The last complete record's hash (what an auditor records); None for an empty log."""
    path = Path(path)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        last, torn = _read_tail(fd)
    finally:
        os.close(fd)
    for candidate in (torn, last):
        record = _parse_record(candidate) if candidate else None
        if record is not None:
            return record["hash"]
    if last is not None:
        raise AuditLogError(f"{path}: the last line is not a valid audit record")
    return None


def verify_log(
    path: str | Path, public_key: Ed25519PublicKey | None = None, anchor: str | None = None
) -> VerifyResult:
    """Check every record's hash, the chain, the sequence and (with a key) every signature.

    The first bad line is named with what happened to it when the evidence says so: edited
    (content does not match its hash), dropped (a gap in ``seq``), inserted (a copy, or a
    record the chain skips over), reordered (it links to a later line). ``anchor`` is a head
    hash recorded earlier; the chain must still contain it, which catches a cut-off end.
    """
    path = Path(path)
    if not path.is_file():
        raise AuditLogError(f"{path}: no such audit log")
    size = _committed_size(path)
    chain = _Chain(public_key)
    with path.open("rb") as handle:
        lines = _lines(handle, size)
        for number, raw in lines:
            problem = chain.check(number, raw, lines)
            if problem is not None:
                return problem
    if anchor is not None and anchor not in chain.line_of:
        return chain.result(
            None,
            f"anchor {anchor[:16]}... is not in the log: records were cut off its end, or "
            "the log was rewritten",
        )
    return chain.result(None, "")


class _Chain:
    """The state of a verification pass: what a record must link to, and what came before."""

    def __init__(self, public_key: Ed25519PublicKey | None) -> None:
        self.public_key = public_key
        self.hashes: list[str] = []  # hash of line n at index n - 1
        self.line_of: dict[str, int] = {}
        self.repairs = 0

    def result(
        self, first_bad: int | None, problem: str, torn: bool = False, records: int | None = None
    ) -> VerifyResult:
        good = len(self.hashes) if records is None else records
        return VerifyResult(
            ok=not problem,
            records=good,
            first_bad=first_bad,
            problem=problem,
            head_hash=self.hashes[good - 1] if good else None,
            torn=torn,
            repairs=self.repairs,
            signatures_checked=self.public_key is not None,
        )

    def check(self, n: int, raw: bytes, rest: Iterator[tuple[int, bytes]]) -> VerifyResult | None:
        complete = raw.endswith(b"\n")
        record, what = _json_object(raw.rstrip(b"\n"))
        if record is not None and not _has_chain_fields(record):
            record, what = None, "not an audit record (no seq/prev/hash)"
        if record is None:
            if not complete:
                return self.result(
                    n,
                    f"line {n} is torn: {len(raw)} bytes with no newline, an incomplete record "
                    f"left by a writer that stopped mid-write (the {n - 1} records before it "
                    "verify; the next append removes it and records a repair note)",
                    torn=True,
                )
            return self.result(n, f"line {n} is {what}: it was edited or inserted")
        if record_hash(record) != record["hash"]:
            return self.result(n, f"line {n} was edited: its content does not match its hash")
        expected_prev = self.hashes[-1] if self.hashes else GENESIS
        if record["seq"] != n or record["prev"] != expected_prev:
            return self._broken_link(n, record, rest)
        if self.public_key is not None:
            problem = _signature_problem(record, self.public_key)
            if problem:
                return self.result(n, f"line {n}: {problem}")
        self.hashes.append(record["hash"])
        self.line_of.setdefault(record["hash"], n)
        if record.get("event") == "repair":
            self.repairs += 1
        return None

    def _broken_link(
        self, n: int, record: dict[str, Any], rest: Iterator[tuple[int, bytes]]
    ) -> VerifyResult:
        seq, prev = record["seq"], record["prev"]
        if record["hash"] in self.line_of:
            copy = self.line_of[record["hash"]]
            return self.result(n, f"line {n} repeats line {copy}: a record was inserted")
        before_previous = self.hashes[-2] if len(self.hashes) >= 2 else GENESIS
        if n >= 2 and prev == before_previous and seq == n - 1:
            # This record links over line n - 1, which the chain never contained.
            target = f"line {n - 2}" if n > 2 else "the start of the log"
            return self.result(
                n - 1,
                f"line {n - 1} was inserted: line {n} (record {seq}) links to {target}",
                records=n - 2,
            )
        for later, raw in rest:
            candidate, _ = _json_object(raw.rstrip(b"\n"))
            if candidate is not None and candidate.get("hash") == prev:
                return self.result(
                    n,
                    f"line {n} (record {seq}) belongs after line {later}: records were reordered",
                )
        if isinstance(seq, int) and seq > n:
            missing = f"record {n}" if seq == n + 1 else f"records {n}-{seq - 1}"
            return self.result(n, f"{missing} missing before line {n}: dropped from the log")
        return self.result(
            n,
            f"line {n} does not follow line {n - 1}: its prev hash differs (line {n - 1} was "
            f"rewritten with a new hash, or line {n} was)",
        )


def generate_signing_key(path: str | Path) -> Path:
    """Write a new Ed25519 private key (PEM, mode 0600) and its public key beside it (.pub).

    Returns the public key's path. Refuses to overwrite either file.
    """
    path = Path(path)
    public_path = path.with_name(path.name + ".pub")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public_path.exists():
        raise AuditLogError(f"{public_path}: already exists; refusing to overwrite a key")
    _write_new(path, private_pem, 0o600)
    _write_new(public_path, public_pem, 0o644)
    return public_path


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    key = _load_pem(path, serialization.load_pem_private_key, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditLogError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    key = _load_pem(path, serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise AuditLogError(f"{path}: not an Ed25519 public key")
    return key


def _load_pem(path: str | Path, loader: Any, **kwargs: Any) -> Any:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuditLogError(f"{path}: cannot read the key ({exc.strerror})") from None
    try:
        return loader(data, **kwargs)
    except (ValueError, TypeError):
        kind = "public" if loader is serialization.load_pem_public_key else "private"
        raise AuditLogError(f"{path}: not a PEM {kind} key") from None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise AuditLogError(f"{path}: already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is filtered by the umask


def _signature_problem(record: Mapping[str, Any], public_key: Ed25519PublicKey) -> str | None:
    signature = record.get("signature")
    if not isinstance(signature, str):
        return "not signed, but a public key was given"
    expected = key_id(public_key)
    if record.get("signer") != expected:
        return f"signed by key {record.get('signer')}, not by the given key {expected}"
    try:
        public_key.verify(bytes.fromhex(signature), record["hash"].encode("ascii"))
    except (InvalidSignature, ValueError):
        return "the signature does not verify (forged, or edited and re-hashed)"
    return None


def _check_appendable(path: Path) -> None:
    """Refuse, once and at once, a log that no record could ever be appended to.

    Otherwise every decision fails on its own, and a lock file that cannot be created looks
    to ``filelock`` like a lock another writer holds, so each one waits out the timeout.
    The lock file is created here (appends create it anyway); the log itself is only opened
    if it exists, so that it is still created by the first append.
    """
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise AuditLogError(f"{path}: cannot write the audit log, {folder} {what}")
    if path.is_dir():
        raise AuditLogError(f"{path}: cannot write the audit log there, it is a folder")
    lock = _lock_path(path)
    _open_or_refuse(path, lock, os.O_RDWR | os.O_CREAT, f"its lock file {lock} cannot be created")
    if path.exists():
        _open_or_refuse(path, path, os.O_RDWR | os.O_APPEND, "it cannot be opened for appending")


def _open_or_refuse(log: Path, target: Path, flags: int, what: str) -> None:
    try:
        os.close(os.open(target, flags, 0o644))
    except OSError as exc:
        raise AuditLogError(
            f"{log}: cannot write the audit log, {what} ({exc.strerror or exc})"
        ) from None


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _committed_size(path: Path) -> int:
    """The file's size while no writer is mid-append (briefly taking the writers' lock).

    Verifying reads only these bytes, so records appended meanwhile are ignored instead of
    showing up half written. A log on read-only media (an auditor's copy) has no writers: its
    size is read without the lock.
    """
    try:
        with filelock.FileLock(_lock_path(path), timeout=LOCK_TIMEOUT_S):
            return path.stat().st_size
    except filelock.Timeout:
        raise AuditLogError(f"{path}: a writer held the log's lock for too long") from None
    except OSError:
        return path.stat().st_size


def _lines(handle: Any, size: int) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) for the first ``size`` bytes; a generator the chain can advance."""
    remaining = size
    for number, raw in enumerate(handle, 1):
        if remaining <= 0:
            return
        raw = raw[:remaining]
        remaining -= len(raw)
        yield number, raw


def _read_tail(fd: int) -> tuple[bytes | None, bytes]:
    """The last complete line (without its newline) and any torn bytes after it."""
    end = os.fstat(fd).st_size
    buf = b""
    while True:
        start = max(0, end - _READ_BLOCK)
        buf = os.pread(fd, end - start, start) + buf
        end = start
        last_newline = buf.rfind(b"\n")
        if last_newline == -1:
            if start == 0:
                return None, buf
            continue
        line_start = buf.rfind(b"\n", 0, last_newline) + 1
        if line_start > 0 or start == 0:
            return buf[line_start:last_newline], buf[last_newline + 1 :]


def _json_object(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The JSON object on one line, or None and what the line is instead, for the verdict."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "not JSON"
    except RecursionError:  # json decodes nested arrays and objects by recursion
        return None, "not JSON (nested too deeply)"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    return value, ""


def _has_chain_fields(record: Mapping[str, Any]) -> bool:
    return (
        isinstance(record.get("seq"), int)
        and isinstance(record.get("prev"), str)
        and isinstance(record.get("hash"), str)
    )


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    """A record whose hash matches its content, or None."""
    record, _ = _json_object(raw)
    if record is None or not _has_chain_fields(record):
        return None
    return record if record_hash(record) == record["hash"] else None


def _line(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    """Make a new log's directory entry durable too (not supported on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
