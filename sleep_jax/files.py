"""Files written whole or not at all (run records, eval results, hub checkpoints, session
snapshots), and the lock file that lets one process at a time hold a directory."""
import errno
import fcntl
import os
import time
import uuid
from typing import IO, Callable


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """write(temporary path) beside `path`, then rename it to `path`.

    A crash or an error never leaves a half-written file under the final name (the rename is
    atomic on one filesystem), the temporary name is unique (concurrent writers never share it),
    and it is removed if `write` fails.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """`write_atomic` of a text file."""
    def write(temporary):
        with open(temporary, "w") as f:
            f.write(text)
    write_atomic(path, write)


class LockHeld(Exception):
    """Another process holds the lock on ``path``; ``pid`` is the one it wrote there (None if
    it has not written it yet)."""

    def __init__(self, path: str, pid: int | None):
        super().__init__(f"{path}: locked by process {pid if pid is not None else '?'}")
        self.path, self.pid = path, pid


def hold_lock(path: str) -> IO[str]:
    """An exclusive ``flock`` on ``path`` (created if missing), taken without waiting, with this
    process's pid written into the file; returns the open file, which holds the lock until it is
    closed or the process ends (the kernel drops it, so even ``kill -9`` leaves no stale lock).

    Raises ``LockHeld`` naming the holder's pid if another process holds it; other ``OSError``s
    (a filesystem without locks) pass through.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lock = open(path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            lock.close()
            raise
        pid = _holder(lock)
        lock.close()
        raise LockHeld(path, pid) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _holder(lock: IO[str], wait_s: float = 1.0) -> int | None:
    """The pid written in a held lock file; the holder writes it just after locking, so an
    empty file is read again for up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        lock.seek(0)
        text = lock.read().strip()
        if text.isdigit() or time.monotonic() > deadline:
            return int(text) if text.isdigit() else None
        time.sleep(0.02)
