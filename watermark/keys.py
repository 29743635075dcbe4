"""Secret keys for the keyed watermark.

A key file holds 256 random bits as one line of hex. It is created with mode 0600 because
whoever reads it can both verify *and forge* the organisation's mark.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from watermark.types import WatermarkError

KEY_BYTES = 32
_HEADER = "# audioguard keyed-watermark secret key (keep private)"
MAX_KEY_FILE_BYTES = 4096  # a key file is about 120 bytes; anything this long is something else


def generate_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def write_key(path: str | Path, key: bytes | None = None) -> bytes:
    """Write a new (or the given) key to ``path`` with mode 0600; refuse to overwrite."""
    key = generate_key() if key is None else key
    if not str(path).strip():  # Path("") is ".", which "already exists"
        raise WatermarkError("the key file name is empty; give a path such as org.key")
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise WatermarkError(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise WatermarkError(f"{path}: cannot create key file ({exc.strerror})") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{_HEADER}\n{key.hex()}\n")
    os.chmod(path, 0o600)  # O_CREAT's mode is filtered by the umask
    return key


def read_key(path: str | Path) -> bytes:
    """Read a key file written by :func:`write_key`, with a clear sentence when it is not one."""
    path = Path(path)
    not_a_key = WatermarkError(
        f"{path}: not an audioguard key (expected {KEY_BYTES * 8} bits as one line of hex)"
    )
    try:
        with path.open("rb") as handle:
            head = handle.read(MAX_KEY_FILE_BYTES + 1)  # an audio file named by mistake: a taste
    except FileNotFoundError:
        raise WatermarkError(f"{path}: key file not found") from None
    except OSError as exc:
        raise WatermarkError(f"{path}: cannot read key file ({exc.strerror or exc})") from None
    if len(head) > MAX_KEY_FILE_BYTES:
        raise not_a_key
    try:
        lines = head.decode("utf-8").splitlines()
    except UnicodeDecodeError:  # the file was read: it is binary (audio, say), not a key
        raise not_a_key from None
    body = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    try:
        key = bytes.fromhex(body[0]) if len(body) == 1 else b""
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise not_a_key
    return key
