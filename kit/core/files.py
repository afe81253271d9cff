"""Files written atomically (a temporary file renamed into place) with normal permissions."""
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from kit.core.errors import WriteError


def umask():
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def writing(path):
    """An OSError while writing path (full disk, permission, read-only file system, a folder in
    its place) becomes one line naming path."""
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        raise WriteError(path, error) from None


def atomic_write(path, write):
    """Call write(tmp_path), then rename into place: readers never see a half-written file, and a
    failed write leaves no temporary file (a WriteError naming path)."""
    path = Path(path)
    tmp = None
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(handle)
            write(tmp)
            os.chmod(tmp, 0o666 & ~umask())   # mkstemp makes 0600: a teammate must be able to read it
            os.replace(tmp, path)
        finally:
            if tmp is not None and os.path.lexists(tmp):
                os.unlink(tmp)


def write_text(path, text):
    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")
    atomic_write(path, write)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
