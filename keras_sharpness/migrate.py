"""Files written by earlier versions, read as today's.

Earlier versions named the BatchNorm-at-evaluation choice in several ways;
it is ``bn_eval`` everywhere now. `upgrade` renames the old keys, and every
JSON file the project reads (`keras_sharpness.io.read_json`) and every saved
BatchNorm layer passes through it, so old run directories, records and
checkpoints keep loading unchanged. To rewrite old files in place:

    python -m keras_sharpness.migrate results/ ~/runs/old_workdir
"""

import pathlib
import sys

#: Old key -> today's key. The only place the old names remain.
LEGACY_KEYS = {"bn_mode": "bn_eval", "eval_statistics": "bn_eval", "bn_semantics": "bn_eval"}


def upgrade(value):
    """`value` (parsed JSON) with every legacy key renamed, at any depth."""
    if isinstance(value, dict):
        return {LEGACY_KEYS.get(k, k): upgrade(v) for k, v in value.items()}
    if isinstance(value, list):
        return [upgrade(v) for v in value]
    return value


def needs_upgrade(value):
    """Whether `value` holds a legacy key anywhere."""
    if isinstance(value, dict):
        return any(k in LEGACY_KEYS or needs_upgrade(v) for k, v in value.items())
    if isinstance(value, list):
        return any(needs_upgrade(v) for v in value)
    return False


def migrate_files(paths, echo=print):
    """Rewrites every ``*.json`` at or under `paths` that holds a legacy key.

    Returns:
        The list of rewritten files.
    """
    import json

    from keras_sharpness import io

    changed = []
    for root in map(pathlib.Path, paths):
        files = [root] if root.is_file() else sorted(root.rglob("*.json"))
        for path in files:
            try:
                value = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # not ours to fix: reading it will name the problem
            if needs_upgrade(value):
                io.write_json(path, upgrade(value))
                changed.append(path)
                echo(f"migrated {path}")
    echo(f"{len(changed)} file(s) migrated")
    return changed


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m keras_sharpness.migrate PATH [PATH ...]")
    migrate_files(sys.argv[1:])
