"""Files written whole or not at all: every file amcl writes goes through :func:`write_atomic`.

* :func:`write_atomic`: a temporary file in the same folder, then ``os.replace``; a reader (or a run
  killed mid-write) never sees half a file, the file takes the umask's permissions, and on any failure
  the temporary file is removed and the previous version of the file is left as it was;
* :func:`write_json` (NaN written as ``null``) and :func:`write_torch` (``torch.save``) on top of it;
* :func:`write_failure`: the one-line :class:`~amcl.errors.WriteError` of a file that could not be
  written, with the space it needs when the disk is full.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from amcl.errors import WriteError

__all__ = ["write_atomic", "write_failure", "write_json", "write_torch"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_atomically(target: Path, content: str | bytes | Callable[[Path], None], durable: bool) -> None:
    """:func:`write_atomic` without the translation of ``OSError``."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files
        if callable(content):
            os.close(fd)
            fd = -1
            content(tmp)
            if durable:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
        else:
            with os.fdopen(fd, "wb") as f:
                fd = -1
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        exc.partial_size = tmp.stat().st_size if tmp.exists() else 0  # type: ignore[attr-defined]
        raise
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)


#: The errors of a file system without room for a file: ENOSPC (disk full), EDQUOT (quota), EFBIG (file size limit).
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: The errors of a folder that may not be written: no permission, immutable (EPERM) or a read-only file system.
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _size_text(size: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def write_failure(path: str | os.PathLike[str], exc: OSError, needed: int | None = None) -> WriteError:
    """The :class:`WriteError` for a file that could not be written: which file, why, and on a full disk how
    much space it needs and how much is free; an older version of the file is said to be kept."""
    target = Path(path)
    text = f"cannot write {target}: {exc.strerror or exc}"
    if exc.errno in _NO_ROOM:
        previous = target.stat().st_size if target.is_file() else 0  # a good guess for a rewritten checkpoint
        partial = getattr(exc, "partial_size", 0)  # what got written before the failure
        amount = (_size_text(needed) if needed is not None else
                  f"about {_size_text(previous)}" if previous > partial else f"at least {_size_text(partial)}")
        try:
            where = f"{_size_text(shutil.disk_usage(target.parent).free)} free in {target.parent}"
        except OSError:
            where = f"on the disk of {target.parent}"
        text += f" (it needs {amount}, {where})"
    if target.is_file():
        text += f"; the previous {target.name} is kept"
    if exc.errno in _NOT_WRITABLE:
        return WriteError(text + f"; {target.parent} is read-only or not writable: make it writable or choose "
                                 "another folder")
    return WriteError(text + ("; free some space or choose another folder" if exc.errno in _NO_ROOM else
                              "; choose another folder"))


def write_atomic(path: str | os.PathLike[str], content: str | bytes | Callable[[Path], None],
                 durable: bool = False) -> None:
    """Write ``content`` (text, bytes, or a function writing the temporary path it is given) to ``path``
    through a temporary file beside it and ``os.replace``. ``durable`` flushes the file to disk before
    the rename (checkpoints). The file gets the umask's permissions like any other; on any failure the
    temporary file is removed and an existing file at ``path`` is left as it was, and an ``OSError``
    becomes a :class:`WriteError` naming the file (and on a full disk the space it needs)."""
    try:
        _replace_atomically(Path(path), content, durable)
    except OSError as exc:
        needed = None if callable(content) else len(content.encode("utf-8") if isinstance(content, str) else content)
        raise write_failure(path, exc, needed) from None


class _RecordedErrors:
    """A binary file that remembers the first ``OSError`` of its writes: torch's zip writer reports one
    only as a ``RuntimeError`` of its own."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.file.flush()


def write_torch(path: str | os.PathLike[str], data: Any, durable: bool = False) -> None:
    """``torch.save(data)`` to ``path`` through :func:`write_atomic`, so that a full disk is one
    :class:`WriteError` like any other file's (not torch's zip-writer message)."""
    import torch

    def save(partial: Path) -> None:
        with open(partial, "wb") as f:
            recorded = _RecordedErrors(f)
            try:
                torch.save(data, recorded)  # type: ignore[arg-type]  # a file object (a path gets its own writer)
            except RuntimeError:
                if recorded.error is not None:
                    raise recorded.error from None
                raise

    write_atomic(path, save, durable=durable)


def _finite_or_null(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite_or_null(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite_or_null(v) for v in data]
    return data


def write_json(path: str | os.PathLike[str], data: Any, indent: int = 2) -> None:
    """``data`` as JSON, written atomically (see :func:`write_atomic`). NaN and infinities are written as
    ``null``: JSON has no such numbers (files of older versions that hold bare ``NaN`` still read)."""
    write_atomic(path, json.dumps(_finite_or_null(data), indent=indent, allow_nan=False) + "\n")
