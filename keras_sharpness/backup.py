"""Per-epoch backups that a kill at any instant cannot tear.

Keras' `BackupAndRestore` overwrites ``latest.weights.h5`` and then
``training_metadata.json`` in place: a kill during either write leaves a
backup that cannot be loaded, or weights of one epoch with the epoch counter
of another. `CrashSafeBackup` writes each epoch's weights (model and optimizer
state) to a new file ``epoch-<e>.weights.h5`` and then, atomically, the
metadata that names it; only after that are older weight files removed. At
any instant the metadata names a complete file whose weights belong to the
epoch it states.
"""

import json
import pathlib

import keras

from keras_sharpness import io

METADATA = "backup.json"


class CrashSafeBackup(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` (per epoch) with atomic, consistent files.

    Args:
        backup_dir: the backup folder.
        write: False for a worker that only reads it (a non-chief worker of
            `tf.distribute.MultiWorkerMirroredStrategy` restores from the
            chief's backup and writes nothing).
    """

    def __init__(self, backup_dir, write=True):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False)
        self.folder = pathlib.Path(backup_dir)
        self.write = write

    def _metadata(self):
        path = self.folder / METADATA
        return json.loads(path.read_text()) if path.is_file() else None

    def _load_model(self):
        if self.write:
            io.remove_temporary_files(self.folder)
        metadata = self._metadata()
        if metadata is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(self.folder / metadata["weights"]))
        self.model._initial_epoch = int(metadata["epoch"])

    def _save_model(self):
        if not self.write:
            return
        epoch = int(self._current_epoch)
        name = f"epoch-{epoch}.weights.h5"
        with io.atomic_path(self.folder / name) as tmp:
            self.model.save_weights(str(tmp), overwrite=True)
        io.write_json(self.folder / METADATA, {"epoch": epoch, "weights": name})
        for old in self.folder.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)
