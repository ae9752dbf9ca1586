"""Run directories: one owner, one manifest, one record store, atomic files.

Every command that writes a directory (``plot_parametric_plot.py``, each
experiment and each of its trials, ``compute_sharpness.py --workdir``) goes
through `RunDir`:

* **Paths.** The standard files have one name each (`RunDir.model`,
  `RunDir.history`, `RunDir.backup`, `RunDir.manifest_path`,
  `RunDir.records_path`).
* **One owner.** `RunDir.open` takes an advisory `fcntl.flock` on ``.lock``
  (`exclusive`); a second process is refused at once with one line naming the
  process that holds it. The operating system releases the lock when its
  holder exits, however it exits, so a lock left by a killed process is simply
  taken over. Opening removes the temporary files a killed owner left
  (`keras_sharpness.io.atomic_path` writes every file under a temporary name
  and renames it whole).
* **A manifest.** ``run.json`` says what made the directory (``kind``,
  ``settings``), its ``status`` and the versions; `RunDir.claim` writes it,
  or compares it with the recorded one and refuses, in one line naming the
  settings that differ, to reuse the work of other settings.
* **One record store** (`RecordStore`, ``sharpness.json``): every measurement
  of the directory's models, keyed, rewritten atomically after each record,
  locked on its own (``.sharpness.json.lock``) so that a measurement can be
  added while another command owns the directory.

Layout of a run directory (a command writes the files it needs)::

    run.json                      manifest
    x0.keras, sb.keras, lb.keras  checkpoints (<name>_last.keras: a last iterate)
    <name>_history.json           per-epoch history of run <name>
    backups/<name>/               crash-safe per-epoch state while <name> trains
    sharpness.json                record store
    .lock, .sharpness.json.lock   the locks (empty while nobody holds them)
"""

import atexit
import contextlib
import fcntl
import json
import os
import pathlib

from keras_sharpness.errors import CheckpointError, UserError

LOCK_NAME = ".lock"
MANIFEST = "run.json"
RECORDS = "sharpness.json"


@contextlib.contextmanager
def exclusive(folder, *, name=LOCK_NAME, what=None):
    """Holds the lock of `folder` (created if needed) for the ``with`` block.

    Not re-entrant: a second ``exclusive`` on the same file, even in the same
    process, is refused (`RunDir.open` is re-entrant within a process).

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


def lock_name(filename):
    """The name of the lock file of a separately locked file (a record store)."""
    return f".{filename}.lock"


#: Run directories this process holds, by resolved path: how many `open`s.
_OPEN = {}
#: `RunDir.hold` stacks, kept until the process exits.
_HELD = []


@atexit.register
def _release_held():
    """Releases what `hold` holds while the interpreter still works: left to
    garbage collection at shutdown, the lock's ``finally`` would find this
    module's globals gone and print a traceback after the command's output."""
    while _HELD:
        _HELD.pop().close()


class RunDir:
    """A run directory: its paths, lock, manifest and record store.

    Args:
        path: the directory (created when it is opened).
        what: how errors call it (default ``run directory <path>``; the
            commands say ``--workdir <path>``).
    """

    def __init__(self, path, *, what=None):
        self.path = pathlib.Path(path)
        self.what = what or f"run directory {self.path}"

    def __repr__(self):
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------- paths
    @property
    def manifest_path(self):
        return self.path / MANIFEST

    @property
    def records_path(self):
        """The record store of the directory's measurements (`RecordStore`)."""
        return self.path / RECORDS

    def model(self, name):
        """Checkpoint of model `name` (``x0``, ``sb``, ``lb``, ...)."""
        return self.path / f"{name}.keras"

    def history(self, name):
        """Per-epoch history of training run `name`."""
        return self.path / f"{name}_history.json"

    def backup(self, name):
        """Crash-safe backup folder of training run `name` (while it trains)."""
        return self.path / "backups" / name

    def checkpoints(self):
        """Names of the checkpoints (``*.keras``) in the directory."""
        return sorted(p.name for p in self.path.glob("*.keras")) if self.path.is_dir() else []

    # -------------------------------------------------------------- owner
    @property
    def is_open(self):
        """Whether this process holds the directory's lock."""
        return self._key() in _OPEN

    def _key(self):
        return os.path.realpath(self.path)

    @contextlib.contextmanager
    def open(self, read_only=False):
        """Holds the directory for the ``with`` block; yields the `RunDir`.

        Takes the lock (a second process is refused), then removes the
        temporary files a killed owner left. Re-entrant within a process: a
        directory already held (e.g. by `hold`, or by a caller) is simply used.
        With `read_only` (a non-chief worker of
        `tf.distribute.MultiWorkerMirroredStrategy`, which reads what the
        chief writes) it takes no lock and touches nothing.

        Raises:
            UserError: another live process holds it (one line naming its pid).
        """
        if read_only:
            yield self
            return
        key = self._key()
        if key in _OPEN:
            _OPEN[key] += 1
            try:
                yield self
            finally:
                _OPEN[key] -= 1
            return
        with exclusive(self.path, what=self.what):
            key = self._key()  # the folder exists now: resolve it again
            _OPEN[key] = 1
            try:
                self.remove_temporary_files()
                yield self
            finally:
                del _OPEN[key]

    def hold(self, read_only=False):
        """Holds the directory until the process exits (for entry points);
        with `read_only`, see `open`."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.open(read_only))
        _HELD.append(stack)
        return self

    def remove_temporary_files(self):
        """Deletes the leftovers of killed `atomic_path` writers in the directory.

        Folders holding a lock of their own (run directories inside this one,
        e.g. trials) and the temporaries of separately locked files (record
        stores) are left to their owners.
        """
        from keras_sharpness import io

        def clean(folder):
            for entry in folder.iterdir():
                if entry.is_dir():
                    if not (entry / LOCK_NAME).exists():
                        clean(entry)
                    continue
                if not entry.name.startswith(io.TEMP_PREFIX):
                    continue
                target = io.temporary_target(entry.name)
                if target is None or not (folder / lock_name(target)).exists():
                    entry.unlink(missing_ok=True)

        if self.path.is_dir():
            clean(self.path)

    # ----------------------------------------------------------- manifest
    def manifest(self):
        """The recorded manifest (None if there is none), of any version.

        A directory of an earlier experiment version has ``experiment.json``
        instead, and a ``run.json`` of an earlier version no ``kind``; both
        are read as today's manifests (`keras_sharpness.migrate`).

        Raises:
            CheckpointError: the manifest is corrupt (one line).
        """
        from keras_sharpness import io, migrate

        path = self.manifest_path
        if not path.is_file():
            return migrate.legacy_manifest(self.path)
        try:
            record = io.read_json(path)
        except CheckpointError:
            raise CheckpointError(f"{path} is corrupt; use another --workdir or delete "
                                  f"it") from None
        if not isinstance(record, dict):
            raise CheckpointError(f"{path} is not a run manifest; use another --workdir")
        return migrate.upgrade_manifest(record)

    def claim(self, manifest, *, identity=None, strict=()):
        """Records `manifest` as the directory's, refusing the work of other settings.

        The identities (``identity(manifest)``, flattened: nested dicts give
        ``outer.inner`` keys) of the recorded manifest and of `manifest` are
        compared key by key (keys the recorded one lacks are not compared:
        settings added later). A difference in a `strict` key, or any
        difference while the directory holds checkpoints, is refused; so is
        a directory of another ``kind``, or one with checkpoints but no
        manifest.

        Args:
            manifest: the new manifest, a JSON-ready dict with ``kind``.
            identity: manifest -> dict of what defines the directory's work
                (default: its ``settings``).
            strict: identity keys refused even before any checkpoint exists.

        Raises:
            CheckpointError: one line naming the settings that differ.
        """
        self.check(manifest, identity=identity, strict=strict)
        self.write_manifest(manifest)

    def check(self, manifest, *, identity=None, strict=()):
        """What `claim` checks, without writing (see there)."""
        identity = identity or (lambda record: record.get("settings") or {})
        old = self.manifest()
        work = self.checkpoints()
        where = f"workdir {self.path}"
        if old is None:
            if work:
                raise CheckpointError(
                    f"{where} holds checkpoints ({', '.join(work)}) but no {MANIFEST} "
                    f"saying what made them; use another --workdir")
            return
        kind, old_kind = manifest.get("kind"), old.get("kind")
        if old_kind != kind:
            raise CheckpointError(f"{where} holds a run of kind {old_kind}, not {kind}; use "
                                  f"another --workdir")
        old_id, new_id = _flat(_jsonable(identity(old))), _flat(_jsonable(identity(manifest)))
        differ = [k for k in old_id if old_id[k] != new_id.get(k)]
        named = [k for k in differ if k in strict] or (differ if work else [])
        if named:
            # A strict difference (another network, say) is the one that matters.
            differ = named
            diffs = ", ".join(f"{k}={old_id[k]!r} (now {new_id.get(k)!r})" for k in differ)
            raise CheckpointError(f"{where} was made with {diffs}; use another --workdir or "
                                  f"the same flags")

    def write_manifest(self, manifest):
        """Writes ``run.json`` atomically (the directory must be held)."""
        from keras_sharpness import io

        self._require_open()
        io.write_json(self.manifest_path, manifest)

    def set_status(self, status, **fields):
        """Rewrites the manifest with ``status`` (and `fields`); returns it."""
        manifest = {**(self.manifest() or {}), **fields, "status": status}
        self.write_manifest(manifest)
        return manifest

    def _require_open(self):
        if not self.is_open:
            raise RuntimeError(f"{self} is written without holding it (RunDir.open)")


def _jsonable(value):
    """`value` as JSON reads it back (tuples as lists, paths as strings)."""
    from keras_sharpness import io

    return json.loads(json.dumps(value, default=io._jsonable))


def _flat(identity, prefix=""):
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for key, value in identity.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class RecordStore:
    """A keyed store of measurement records: a JSON list, one record per key.

    `open` locks the store on its own (``.<name>.lock`` beside it, so that
    records can be added to a directory another command owns) and reads it;
    `put` replaces the record of the same key, or appends, and rewrites the
    file atomically at once, so a kill loses at most the record being made.

    Args:
        path: the JSON file.
        key: record -> hashable key (`keras_sharpness.measure.record_key`).
        write: False for a reader that must not write (a non-chief worker of
            `tf.distribute.MultiWorkerMirroredStrategy`, which computes what
            the chief computes): `open` reads without the lock, `put` keeps
            the record in memory only.
    """

    def __init__(self, path, *, key, write=True):
        self.path = pathlib.Path(path)
        self.key = key
        self.write = write
        self._records = None

    def read(self):
        """The stored records (none if the file does not exist).

        Raises:
            UserError: the file holds something else than a list of records.
        """
        from keras_sharpness import io

        if not self.path.is_file():
            return []
        records = io.read_json(self.path)
        if not isinstance(records, list):
            raise UserError(f"{self.path} is not a list of measurement records; move it away")
        return records

    @contextlib.contextmanager
    def open(self):
        """Holds the store for the ``with`` block; yields it, read.

        Raises:
            UserError: another process holds it, or it is not a record list.
        """
        from keras_sharpness import io

        if self.write:
            io.ensure_writable_dir(self.path.parent, "record store directory")
        with (exclusive(self.path.parent, name=lock_name(self.path.name), what=str(self.path))
              if self.write else contextlib.nullcontext()):
            self._records = self.read()
            try:
                yield self
            finally:
                self._records = None

    def find(self, key):
        """The stored records of `key` (oldest first); the store must be open."""
        return [r for r in self._open_records() if self.key(r) == key]

    def put(self, record):
        """Stores `record` in place of the one of its key; written at once."""
        from keras_sharpness import io

        key = self.key(record)
        self._records = [r for r in self._open_records() if self.key(r) != key] + [record]
        if self.write:
            io.write_json(self.path, self._records)

    def _open_records(self):
        if self._records is None:
            raise RuntimeError(f"record store {self.path} is used without opening it")
        return self._records


__all__ = ["LOCK_NAME", "MANIFEST", "RECORDS", "RecordStore", "RunDir", "exclusive",
           "lock_name"]
