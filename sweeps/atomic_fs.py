"""Whole files or none: every file the project writes into a study folder goes through `write_atomic`.

A write to a temporary name in the same folder, flushed and fsynced, then `os.replace`d over the target: a full
disk, a killed process or a power cut leaves either the old file or the whole new one, never a partial or empty
one (POSIX rename(2) is atomic within one filesystem; the folder is fsynced so the new name survives a crash).
`refuse_links` keeps the project's writes inside a folder that may have come from someone else.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write `data` to `path` whole: temporary file beside it, fsync, rename over it. A symlink at `path` is
    replaced, never written through."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else bytes(data)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def sync_folder(folder: str | Path) -> None:
    """fsync a folder, so a rename inside it survives a crash (where the OS allows opening folders)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def refuse_links(path: Path, inside: Path, error: type[Exception]) -> None:
    """Raise `error` (one line) unless `path` and every folder between `inside` and it are plain (not symlinks)
    and `path` lies inside `inside`: an output must not be written through a link planted in a received folder."""
    path, inside = Path(os.path.abspath(path)), Path(os.path.abspath(inside))
    if path != inside and inside not in path.parents:
        raise error(f"{path} is outside {inside}; outputs are written only inside the study folder")
    step = inside
    for part in path.relative_to(inside).parts:
        step = step / part
        if step.is_symlink():
            raise error(f"{step} is a symlink; outputs are never written through links (a planted link could "
                        f"overwrite files elsewhere): remove it, then run the command again")
