"""A study folder's safety: everything a security review of `<storage>/<study name>/` needs, in one place.

- Where a sweep writes: `experiment_dir` (the study folder), and Ray's own messages under `logs/ray.log`.
- One study per folder: `claim_folder` locks the folder (`.sweep.lock`, one driver at a time) and refuses one an
  earlier study left results in, or with `overwrite` deletes its old entries, keeping only a dynamics cache that
  lives inside it; `check_free_space` refuses storage with under 100 MiB free.
- No code from a received folder: `Tuner.restore` unpickles the folder's Ray files, so `resume` first checks
  `.resume-signature.json`, an HMAC-SHA256 over those files under this installation's key (`resume_key`, 0600),
  written by `sign_folder` whenever a sweep or resume ends and by `KeepSigned` while Tune runs; a folder that does
  not match is refused unless trusted explicitly. Reading a folder (report, export) never unpickles: results.py,
  the only code that opens trial files, reads JSON and YAML alone.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import secrets
import shutil
import time
from pathlib import Path

from ray import tune

from .study import STUDY_FILE, Study, StudyError

RAY_LOG = Path("logs") / "ray.log"                   # Ray's and Tune's messages in a quiet sweep
SIGNATURE_FILE = ".resume-signature.json"
CONFIG_DIR_ENV = "OFFLINE_SWEEPS_CONFIG_DIR"          # where this installation's resume key lives
LOCK_FILE = ".sweep.lock"
MIN_FREE_BYTES = 100 * 2**20


def experiment_dir(study: Study) -> Path | str:
    """The study's folder, `<storage>/<name>`: a resolved local path, or a URI (s3://, gs://) left to Ray."""
    if "://" in study.storage:
        return f"{study.storage.rstrip('/')}/{study.name}"
    return Path(study.storage).expanduser().resolve() / study.name


def ray_log_file(folder: Path | str, name: str) -> Path:
    """Where Ray's and Tune's own messages go while a sweep runs quietly: `<study folder>/logs/ray.log`, or a
    temporary file when the study folder is a URI (s3://, gs://)."""
    if isinstance(folder, Path):
        return folder / RAY_LOG
    import tempfile
    return Path(tempfile.gettempdir()) / f"offline-sweeps-{name}-{time.strftime('%Y%m%d-%H%M%S')}-ray.log"


def config_dir() -> Path:
    """$OFFLINE_SWEEPS_CONFIG_DIR, else $XDG_CONFIG_HOME/offline_sweeps, else ~/.config/offline_sweeps."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config").expanduser() / "offline_sweeps"


def resume_key() -> bytes:
    """This installation's key for signing study folders (`<config dir>/resume.key`, made 0600 on first use)."""
    path = config_dir() / "resume.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".resume.key-{secrets.token_hex(6)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
        try:
            os.link(temporary, path)        # never replaces a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return bytes.fromhex(path.read_text().strip())


def ray_state_files(folder: Path) -> list[Path]:
    """What `Tuner.restore` may unpickle: every file at the top of the folder (tuner.pkl, experiment_state-*.json
    with its cloudpickle blobs, searcher and variant states, study.yaml) and every .pkl below it (a trial's
    error.pkl, a dict checkpoint)."""
    top = [p for p in folder.iterdir() if p.is_file() and p.name not in (SIGNATURE_FILE, LOCK_FILE)]
    below = [p for p in folder.glob("*/**/*.pkl") if p.is_file()]
    return sorted(set(top + below))


def _folder_mac(folder: Path) -> str:
    mac = hmac.new(resume_key(), digestmod=hashlib.sha256)
    for path in ray_state_files(folder):
        mac.update(path.relative_to(folder).as_posix().encode() + b"\0")
        mac.update(hashlib.sha256(path.read_bytes()).digest())
    return mac.hexdigest()


def sign_folder(folder: Path) -> None:
    """Record that this installation wrote the folder's Ray state as it is now (an HMAC-SHA256 under
    resume_key()); `resume` restores only a folder whose files still match."""
    temporary = folder / f"{SIGNATURE_FILE}.tmp"
    temporary.write_text(json.dumps({"hmac_sha256": _folder_mac(folder)}))
    os.replace(temporary, folder / SIGNATURE_FILE)


class KeepSigned(tune.Callback):
    """Re-signs the folder while Tune runs, whenever its Ray files changed (looked at once per `every` seconds
    at most, at the end of a Tune loop step), so that a driver killed with SIGKILL, which cannot sign, leaves a
    folder `resume` accepts unless it died between a state write and the next look. Tune writes its
    experiment state to a staging folder and copies it here in the background, hence the polling."""

    def __init__(self, folder: Path, every: float = 2.0):
        self.folder, self.every = Path(folder), every
        self._looked, self._signed = -math.inf, None

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._looked < self.every:
            return
        self._looked = now
        stamp = _state_stamp(self.folder)
        if stamp != self._signed:
            sign_folder(self.folder)
            self._signed = stamp


def _state_stamp(folder: Path) -> tuple:
    """What changes when a Ray file is rewritten: each one's name, size and modification time."""
    stamps = []
    for path in ray_state_files(folder):
        try:
            info = path.stat()
        except FileNotFoundError:      # removed between the listing and now: the next look sees the change
            continue
        stamps.append((path.relative_to(folder).as_posix(), info.st_size, info.st_mtime_ns))
    return tuple(stamps)


def check_signature(folder: Path) -> None:
    """Refuse, before anything is unpickled, a folder whose Ray files this installation did not sign."""
    trust = f"if you trust the folder and where it came from, run `python launch.py resume --trust {folder}`"
    try:
        recorded = json.loads((folder / SIGNATURE_FILE).read_text())["hmac_sha256"]
    except FileNotFoundError:
        raise StudyError(f"{folder} was not written by this installation (no signature); resuming unpickles its "
                         f"Ray files, which can run code: {trust}") from None
    except (ValueError, KeyError, TypeError):
        recorded = ""
    if not hmac.compare_digest(str(recorded), _folder_mac(folder)):
        raise StudyError(f"{folder}'s Ray files do not match this installation's signature (changed since, made "
                         f"elsewhere, or left by a driver killed with SIGKILL, which cannot sign); resuming "
                         f"unpickles them, which can run code: {trust}")


def check_free_space(folder: Path) -> None:
    """Refuse a sweep onto storage with less than MIN_FREE_BYTES (100 MiB) free: checkpoints, results and
    Tune's state would fill it mid-run."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise StudyError(f"storage {existing} has {free / 2**20:.0f} MiB free, below the {MIN_FREE_BYTES // 2**20} MiB "
                         f"a sweep needs at least (checkpoints, results, Tune's state); free space or set storage=")


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Hold `<folder>/.sweep.lock` for one driver: a second sweep or resume on the folder stops at once."""
    from filelock import FileLock, Timeout
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise StudyError(f"{folder} is in use by another sweep or resume (lock {folder / LOCK_FILE}); wait for it "
                         f"to end, or give this study another name=") from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def claim_folder(folder: Path, trials: list[dict], overwrite: bool = False):
    """One study per folder: lock it, then refuse it if an earlier study left anything there (a study.yaml
    alone, from a sweep that stopped before Ray started, does not count, nor its logs/), or clear it with `overwrite`,
    keeping a dynamics cache (a trial's `model_dir`) that lives inside it."""
    with folder_lock(folder):
        entries = [p for p in folder.iterdir() if p.name != LOCK_FILE]
        if sorted(p.name for p in entries if p.name not in (SIGNATURE_FILE, RAY_LOG.parts[0])) not in ([], [STUDY_FILE]):
            if not overwrite:
                raise StudyError(f"{folder} already holds a study's results; continue it with `python launch.py "
                                 f"resume {folder}`, give this one a new name=..., or pass --overwrite to clear it")
            keep = {Path(t["model_dir"]).resolve() for t in trials if t.get("model_dir")}
            for entry in entries:
                resolved = entry.resolve()
                if any(resolved == k or resolved in k.parents for k in keep):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        yield
