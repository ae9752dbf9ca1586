"""One owner per run directory: an exclusive lock held for a command's lifetime.

Two commands writing one work directory (two trainings of the same run, two
measurements into one record file) would overwrite each other's checkpoints
and records. `exclusive` takes an advisory `fcntl.flock` on a lock file
beside what it protects; a second process is refused at once with one line
naming the process that holds it. The operating system releases the lock when
its holder exits, however it exits, so a lock left by a killed process is
simply taken over.
"""

import contextlib
import fcntl
import os
import pathlib

from keras_sharpness.errors import UserError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def exclusive(folder, *, name=LOCK_NAME, what=None):
    """Holds the lock of `folder` (created if needed) for the ``with`` block.

    Args:
        folder: the directory to own.
        name: the lock file's name inside it (one folder may hold several
            independently locked files, e.g. record files).
        what: how to call the locked thing in the error (default: the folder).

    Raises:
        UserError: another live process holds the lock.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{what or folder} is in use by process {holder}; wait for it to "
                        f"finish or stop it") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield path
    finally:
        # The file stays (emptied): unlinking it would let a process that
        # opened it just before lock an orphaned inode while a third locks a
        # new file, two owners at once.
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def hold(folder, **kwargs):
    """Takes the lock of `folder` until the process exits (for entry points)."""
    stack = contextlib.ExitStack()
    stack.enter_context(exclusive(folder, **kwargs))
    _HELD.append(stack)
    return stack


_HELD = []
