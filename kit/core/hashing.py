"""Fingerprints: a short stable hash of JSON-able values, and of a file's bytes."""
import hashlib
import json
from pathlib import Path


def fingerprint(*parts):
    """16 hex characters of sha256 over a JSON rendering of parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_fingerprint(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
