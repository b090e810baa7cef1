"""Whole files or none: every file the project writes into a study folder goes through `write_atomic`.

A write to a temporary name in the same folder, flushed and fsynced, then `os.replace`d over the target: a full
disk, a killed process or a power cut leaves either the old file or the whole new one, never a partial or empty
one (POSIX rename(2) is atomic within one filesystem; the folder is fsynced so the new name survives a crash).
`whole_tune_copies` makes Ray Tune's own copies into the folder whole files the same way; `refuse_links` keeps the
project's writes inside a folder that may have come from someone else.
"""
from __future__ import annotations

import os
import posixpath
import secrets
from pathlib import Path
from typing import Iterable


def write_atomic(path: str | Path, data: bytes | str | Iterable[bytes]) -> None:
    """Write `data` (bytes, text, or an iterable of byte blocks) to `path` whole: temporary file beside it, fsync,
    rename over it. A symlink at `path` is replaced, never written through."""
    path = Path(path)
    blocks = [data.encode()] if isinstance(data, str) else [bytes(data)] if isinstance(data, (bytes, bytearray,
                                                                                            memoryview)) else data
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            for block in blocks:
                handle.write(block)
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


def whole_tune_copies() -> None:
    """Make Ray Tune's copies into local storage whole files (idempotent; once per process, driver and trial
    workers). Tune 2.60 writes every file of a study folder by copying it from a staging folder with
    `pyarrow.fs.copy_files` (ray.train._internal.storage._pyarrow_fs_copy_files: experiment state, tuner.pkl,
    each trial's params.json and result.json, checkpoints), which writes in place: a full disk left zero-byte or
    partial files that resume then failed on. Here a copy into a local filesystem writes each file with
    write_atomic instead; other destinations (s3://, gs://) keep pyarrow's copy."""
    from ray.train._internal import storage
    if getattr(storage._pyarrow_fs_copy_files, "whole_files", False):
        return
    original = storage._pyarrow_fs_copy_files

    def copy_whole(source, destination, source_filesystem=None, destination_filesystem=None, **kwargs):
        import pyarrow.fs as pafs
        if destination_filesystem is None:
            destination_filesystem, destination = pafs.FileSystem.from_uri(destination)
        if not isinstance(destination_filesystem, pafs.LocalFileSystem):
            return original(source, destination, source_filesystem, destination_filesystem, **kwargs)
        if source_filesystem is None:
            source_filesystem, source = pafs.FileSystem.from_uri(source)
        top = source_filesystem.get_file_info(source)
        if top.type == pafs.FileType.File:
            entries = [top]
        else:
            entries = source_filesystem.get_file_info(pafs.FileSelector(source, recursive=True))
            os.makedirs(destination, exist_ok=True)
        for entry in entries:
            target = destination if entry is top else posixpath.join(destination, posixpath.relpath(entry.path, source))
            if entry.type == pafs.FileType.Directory:
                os.makedirs(target, exist_ok=True)
            elif entry.type == pafs.FileType.File:
                os.makedirs(posixpath.dirname(target) or ".", exist_ok=True)
                with source_filesystem.open_input_stream(entry.path) as stream:
                    write_atomic(target, iter(lambda: stream.read(2**22), b""))

    copy_whole.whole_files = True
    storage._pyarrow_fs_copy_files = copy_whole
