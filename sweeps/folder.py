"""A study folder's safety: everything a security review of `<storage>/<study name>/` needs, in one place.

- Where a sweep writes: `experiment_dir` (the study folder), and Ray's own messages under `logs/ray.log`.
- One study per folder: `claim_folder` locks the folder (`.sweep.lock`, one driver at a time), refuses one an
  earlier study left results in, or with `overwrite` deletes its old entries, keeping only a dynamics cache that
  lives inside it, and marks it (`.offline-sweeps-study`); nothing is deleted from a folder without that marker;
  `check_free_space` refuses storage with under 100 MiB free.
- No links out of a folder: `check_tree` refuses symlinks (but W&B's own, below a wandb/ folder), files hard-linked
  from outside and special files anywhere in it, before a resume, a report or an export reads it.
- No code from a received folder: `Tuner.restore` unpickles the folder's Ray files, so `resume` first checks
  `.resume-signature.json`, an HMAC-SHA256 under this installation's key (`resume_key`, 0600) over the SHA-256 of
  every file in the folder but logs/, report/, best/ and W&B's folders (`signed_files`), written by `sign_folder`
  whenever a sweep or resume ends and by run.KeepSigned while Tune runs; a folder that does not match is refused
  unless trusted explicitly. Reading a folder (report, export) never unpickles: results.py, the only code that
  opens trial files, reads JSON and YAML alone.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
import time
from pathlib import Path

from .atomic_fs import write_atomic
from .study import STUDY_FILE, Study, StudyError

RAY_LOG = Path("logs") / "ray.log"                   # Ray's and Tune's messages in a quiet sweep
SIGNATURE_FILE = ".resume-signature.json"
CONFIG_DIR_ENV = "OFFLINE_SWEEPS_CONFIG_DIR"          # where this installation's resume key lives
LOCK_FILE = ".sweep.lock"
RESERVE_FILE = ".resume-signature.reserve"    # room kept for the signature on a full disk
RESERVE_BYTES = 256 * 2**10
MARKER_FILE = ".offline-sweeps-study"      # written when a sweep claims the folder
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
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (ValueError, UnicodeDecodeError):
        key = b""
    if len(key) < 16:
        raise StudyError(f"{path} is not a resume key (64 hex digits); delete it to make a new one (folders signed "
                         f"with it then need `resume --trust` once)")
    return key


# The links W&B makes below a `wandb/` folder (wandb_init._safe_symlink; debug-core.log points to ~/.cache/wandb):
# nothing of Ray's or this project's reads under `wandb/`, so they are let be wherever they point.
WANDB_LINKS = {"latest-run", "debug.log", "debug-internal.log", "debug-core.log"}
# What neither Ray nor this project's readers ever open as Ray state, and what changes after the last signing
# (Ray's log, W&B's background writer, report and export): left out of the signature, still checked by check_tree.
UNSIGNED_TOP = {SIGNATURE_FILE, RESERVE_FILE, LOCK_FILE, MARKER_FILE, RAY_LOG.parts[0], "report", "best"}
SIGNATURE_VERSION = 2


def check_tree(folder: Path) -> list[Path]:
    """Refuse a study folder holding anything that could make a read or a restore leave it, and return its
    regular files, sorted. Refused (one line naming the entry): a symlink anywhere (except W&B's own WANDB_LINKS below a
    `wandb/` folder, where nothing reads), a file hard-linked
    from outside the folder (its link count exceeds the names it has inside), a fifo, socket or device. Walks
    the whole tree without following links (os.walk(followlinks=False), os.lstat)."""
    folder = Path(folder)
    files, names = [], {}
    for where, folders, plain in os.walk(folder, followlinks=False):
        for name in folders + plain:
            path = Path(where) / name
            try:
                info = os.lstat(path)
            except FileNotFoundError:       # a temporary file renamed meanwhile (Tune copying while it runs)
                continue
            if stat.S_ISLNK(info.st_mode):
                if name in WANDB_LINKS and "wandb" in path.relative_to(folder).parts[:-1]:
                    continue
                raise StudyError(f"{path} is a symlink (to {os.readlink(path)}); a study folder holds no links, "
                                 f"which could make Ray or a report read or write outside it: replace it with what "
                                 f"it points to, or remove it")
            if stat.S_ISREG(info.st_mode):
                files.append(path)
                if info.st_nlink > 1:
                    names.setdefault((info.st_dev, info.st_ino), [info.st_nlink, []])[1].append(path)
            elif not stat.S_ISDIR(info.st_mode):
                raise StudyError(f"{path} is not a file or folder (a fifo, socket or device); a study folder holds "
                                 f"only files and folders: remove it")
    for links, paths in names.values():
        if links > len(paths):
            raise StudyError(f"{paths[0]} is hard-linked from outside {folder} ({links} links, {len(paths)} inside); "
                             f"copy it (cp, not ln) so the folder owns its files, or remove it")
    return sorted(files)


def signed_files(folder: Path) -> list[Path]:
    """Every regular file check_tree finds except UNSIGNED_TOP's and those in a `wandb/` folder: every file a
    restore may read (tuner.pkl, experiment_state-*.json, searcher state, each trial's params, results and
    checkpoints with whatever Ray finds in them, such as a `_dict_checkpoint.pkl`)."""
    return [path for path in check_tree(folder) if path.relative_to(folder).parts[0] not in UNSIGNED_TOP
            and "wandb" not in path.relative_to(folder).parts[:-1]]


def _digest(path: Path) -> bytes:
    """SHA-256 of a regular file's bytes, opened without following a link."""
    digest = hashlib.sha256()
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.digest()


def _folder_mac(folder: Path, cache: dict | None = None) -> str:
    """HMAC-SHA256 under resume_key() of every signed file's relative name and SHA-256. `cache` (signing only,
    within one driver) reuses a digest while a file's inode, size and modification time are unchanged."""
    mac = hmac.new(resume_key(), digestmod=hashlib.sha256)
    mac.update(f"offline-sweeps signature v{SIGNATURE_VERSION}\0".encode())
    for path in signed_files(folder):
        mac.update(path.relative_to(folder).as_posix().encode() + b"\0")
        if cache is None:
            mac.update(_digest(path))
            continue
        info = os.lstat(path)
        key = (str(path), info.st_ino, info.st_size, info.st_mtime_ns)
        if key not in cache:
            cache[key] = _digest(path)
        mac.update(cache[key])
    return mac.hexdigest()


def sign_folder(folder: Path, cache: dict | None = None, use_reserve: bool = True) -> None:
    """Record that this installation wrote the folder's files as they are now (an HMAC-SHA256 under
    resume_key()); `resume` restores only a folder whose files still match. On a full disk the signature
    reserve (RESERVE_FILE, RESERVE_BYTES kept for this) is given up to make room, unless not `use_reserve` (the
    signing while Tune runs keeps it for the last one), and made again once there is room."""
    signature = json.dumps({"version": SIGNATURE_VERSION, "hmac_sha256": _folder_mac(folder, cache)})
    reserve = folder / RESERVE_FILE
    try:
        write_atomic(folder / SIGNATURE_FILE, signature)
    except OSError as error:
        if error.errno != errno.ENOSPC or not use_reserve or not reserve.is_file():
            raise
        reserve.unlink()
        write_atomic(folder / SIGNATURE_FILE, signature)
    if not reserve.is_file():
        try:
            write_atomic(reserve, bytes(RESERVE_BYTES))
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise


def state_stamp(folder: Path) -> tuple:
    """What changes when a signed file is rewritten: each one's name, size and modification time."""
    stamps = []
    for path in signed_files(folder):
        try:
            info = path.stat()
        except FileNotFoundError:      # removed between the listing and now: the next look sees the change
            continue
        stamps.append((path.relative_to(folder).as_posix(), info.st_size, info.st_mtime_ns))
    return tuple(stamps)


def check_signature(folder: Path) -> None:
    """Refuse, before anything is unpickled, a folder whose files this installation did not sign."""
    trust = f"if you trust the folder and where it came from, run `python launch.py resume --trust {folder}`"
    try:
        recorded = json.loads((folder / SIGNATURE_FILE).read_text())
    except FileNotFoundError:
        raise StudyError(f"{folder} was not written by this installation (no signature); resuming unpickles its "
                         f"Ray files, which can run code: {trust}") from None
    except (ValueError, UnicodeDecodeError):
        recorded = {}
    if isinstance(recorded, dict) and "hmac_sha256" in recorded and recorded.get("version") != SIGNATURE_VERSION:
        raise StudyError(f"{folder} was signed by an older version of this project, whose signature left files "
                         f"out: {trust} (once; it is then signed anew)")
    mac = recorded.get("hmac_sha256") if isinstance(recorded, dict) else None
    if not hmac.compare_digest(str(mac).encode(), _folder_mac(folder).encode()):   # bytes: a str must be ASCII
        raise StudyError(f"{folder}'s files do not match this installation's signature (changed since, made "
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
def claim_folder(folder: Path, trials: list[dict], overwrite: bool = False, name: str = ""):
    """One study per folder: lock it, refuse it if an earlier study left anything there (its marker file, a
    study.yaml and logs/ alone, from a sweep that stopped before Ray started, do not count), or clear it with
    `overwrite`, keeping a dynamics cache (a trial's `model_dir`) that lives inside it; then mark it as a study's
    (MARKER_FILE). A folder holding anything but without the marker is not a study's: refused, never cleared."""
    with folder_lock(folder):
        entries = [p for p in folder.iterdir() if p.name != LOCK_FILE]
        marked = is_study_folder(folder)
        if not marked and entries:
            raise StudyError(f"{folder} is not a study folder (no {MARKER_FILE}: this project did not make it, or a "
                             f"version before the marker did) and holds {len(entries)} entr"
                             f"{'y' if len(entries) == 1 else 'ies'}; nothing is deleted: give this study another "
                             f"name= or storage=, or move its contents away yourself")
        if sorted(p.name for p in entries if p.name not in (SIGNATURE_FILE, RESERVE_FILE, MARKER_FILE,
                                                            RAY_LOG.parts[0])) not in (
                [], [STUDY_FILE]):
            if not overwrite:
                raise StudyError(f"{folder} already holds a study's results; continue it with `python launch.py "
                                 f"resume {folder}`, give this one a new name=..., or pass --overwrite to clear it")
            keep = {Path(t["model_dir"]).resolve() for t in trials if t.get("model_dir")}
            for entry in entries:
                resolved = entry.resolve()
                if entry.name == MARKER_FILE or any(resolved == k or resolved in k.parents for k in keep):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        if not marked:
            write_atomic(folder / MARKER_FILE, json.dumps({"offline_sweeps_study": name}) + "\n")
        yield


def is_study_folder(folder: Path) -> bool:
    """Whether `folder` carries this project's study marker (a plain file, MARKER_FILE), written when a sweep
    claimed it: the one folder `--overwrite` may clear."""
    try:
        return stat.S_ISREG(os.lstat(folder / MARKER_FILE).st_mode)
    except FileNotFoundError:
        return False
