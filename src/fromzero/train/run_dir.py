"""One run per out_dir: refuse to start over an existing run, lock the folder while training, and
turn disk trouble into one line that says what to do.

    with claim(out_dir, resume=False, overwrite=False):   # raises FromzeroError if the folder is taken
        ...train...

A folder "holds a run" when it has checkpoints or a non-empty metrics.jsonl: starting a fresh run
there would replace them, so that needs `--resume` (continue it) or `--overwrite` (replace it).
The lock is `flock` on out_dir/.lock, so it vanishes with the process that held it, even after
kill -9; the file keeps the holder's pid, host and command for the message a second run prints.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Iterator

from fromzero.errors import FromzeroError

LOCK = ".lock"
RUN_FILES = ("checkpoints", "metrics.jsonl")  # what a run leaves that a fresh start would replace
REPLACED_BY_OVERWRITE = ("checkpoints", "metrics.jsonl", "tensorboard", "loss.png")

DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}

_held: dict[str, tuple[int, int]] = {}  # resolved out_dir -> (lock fd, how many claims in this process)


def holds_run(out_dir: str | Path) -> bool:
    out = Path(out_dir)
    ckpts, metrics = out / RUN_FILES[0], out / RUN_FILES[1]
    return (ckpts.is_dir() and any(ckpts.iterdir())) or (metrics.is_file() and metrics.stat().st_size > 0)


def check_fresh_start(out_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over an existing one unless the user said which they want."""
    if resume or overwrite or not holds_run(out_dir):
        return
    raise FromzeroError(f"{out_dir} already holds a run (checkpoints or metrics.jsonl); pass --resume to continue "
                        "it, or --overwrite (train.overwrite=true) to replace it, or choose another train.out_dir")


def clear_run(out_dir: str | Path) -> None:
    """What a fresh run with overwrite replaces; an old `best` must not outlive the run it belonged to."""
    out = Path(out_dir)
    for name in REPLACED_BY_OVERWRITE:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


@contextlib.contextmanager
def claim(out_dir: str | Path, resume: bool, overwrite: bool, main: bool = True) -> Iterator[None]:
    """Lock the folder, check it may be used, and hold the lock until the block ends. Only `main`
    (rank 0) does either: other ranks could see the files rank 0 has just begun to write.

    Claims nest within one process (a recipe claims, then its Trainer claims again)."""
    if not main:
        yield
        return
    with translate_disk_errors(out_dir):
        _lock(Path(out_dir))
    try:
        check_fresh_start(out_dir, resume, overwrite)
        yield
    finally:
        _unlock(Path(out_dir))


def _lock(out: Path) -> None:
    key = str(out.resolve())
    if key in _held:
        fd, n = _held[key]
        _held[key] = (fd, n + 1)
        return
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise FromzeroError(f"{out} is in use by {holder}; wait for that run to finish (or stop it), "
                            "or choose another train.out_dir") from None
    except OSError:  # a file system without locks (some network mounts): run unlocked rather than not at all
        pass
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)}\n".encode(), 0)
    _held[key] = (fd, 1)


def _unlock(out: Path) -> None:
    key = str(out.resolve())
    if key not in _held:
        return
    fd, n = _held.pop(key)
    if n > 1:
        _held[key] = (fd, n - 1)
        return
    os.close(fd)  # releases the flock; the file stays (removing it would race with a run just opening it)


# ---------------------------------------------------------------- disk errors

def disk_error(e: OSError, path: str | Path | None, kept: str | Path | None) -> FromzeroError | None:
    """The one-line error for a full or unwritable disk (None for any other OSError)."""
    path = path or e.filename or "the run's files"
    if e.errno in DISK_FULL:
        where = f"the last good checkpoint is kept at {kept}" if kept else "no checkpoint had been written yet"
        return FromzeroError(f"disk full while writing {path}; free space and resume with --resume ({where})")
    if e.errno in NOT_WRITABLE:
        return FromzeroError(f"cannot write {path} ({e.strerror}): the out_dir is not writable; fix its "
                             "permissions or choose another train.out_dir")
    return None


@contextlib.contextmanager
def translate_disk_errors(out_dir: str | Path, kept: str | Path | None = None) -> Iterator[None]:
    """Full / read-only disk inside the block -> one FromzeroError line; other errors pass unchanged."""
    try:
        yield
    except OSError as e:
        err = disk_error(e, e.filename or out_dir, kept)
        if err is None:
            raise
        raise err from None
