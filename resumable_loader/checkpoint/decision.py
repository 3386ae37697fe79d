"""The resume decision: what a load did, returned, logged as one line and kept as JSON.

A resume that silently re-derived the RNG or changed the batch size is a different run from
the one the loss curve suggests; the record says, per component, whether it was restored or
re-derived, what changed between the run that saved and the run that loaded (old -> new), the
data it continues (fingerprint, schedule) and the versions then and now.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

FORMAT = "resumable_loader.resume"
# Version 1: the keys built by record(). Version 2 adds "checksums" (verified, trusted or none
# recorded), "skipped" (the damaged checkpoints a fallback passed over, with their problems)
# and "rollback" (whether a copy of the state was kept to put back on a failure).
VERSION = 2
RESTORED, REDERIVED = "restored", "re-derived"

logger = logging.getLogger("resumable_loader.checkpoint")


def record(
    *,
    checkpoint: Path,
    manifest: dict[str, Any],
    mode: str,
    components: dict[str, str],
    changed: dict[str, tuple[Any, Any]],
    versions_now: dict[str, str],
    rank: int,
    world_size: int,
    checksums: dict[str, Any],
    skipped: list[dict[str, Any]],
    rollback: bool,
) -> dict[str, Any]:
    """The decision dict (plain JSON values)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint),
        "step": manifest["step"],
        "samples_seen": manifest["samples_seen"],
        "tokens_seen": manifest["tokens_seen"],
        "mode": mode,
        "rank": rank,
        "world_size": world_size,
        "components": components,
        "rederived": sorted(name for name, action in components.items() if action != RESTORED),
        "changed": {name: {"old": old, "new": new} for name, (old, new) in changed.items()},
        "checksums": checksums,
        "skipped": skipped,
        "rollback": rollback,
        "data": {
            name: {
                "fingerprint": entry["state"]["fingerprint"],
                "epoch": entry["state"]["epoch"],
                "position": entry["state"]["position"],
                "schedule": entry.get("schedule"),
            }
            for name, entry in manifest["loaders"].items()
        },
        "versions": {"then": manifest["versions"], "now": versions_now},
    }


def summary(decision: dict[str, Any]) -> str:
    """The decision in one log line."""
    restored = [name for name, action in decision["components"].items() if action == RESTORED]
    changes = ", ".join(
        f"{name} {change['old']} -> {change['new']}" for name, change in decision["changed"].items()
    )
    skipped = ", ".join(
        f"{Path(entry['checkpoint']).name} ({len(entry['problems'])} "
        f"problem{'s' if len(entry['problems']) > 1 else ''}: {entry['problems'][0]})"
        for entry in decision["skipped"]
    )
    return (
        f"resumed step {decision['step']} from {decision['checkpoint']} "
        f"(mode {decision['mode']}): restored {', '.join(restored) or 'nothing'}; "
        f"re-derived {', '.join(decision['rederived']) or 'nothing'}; "
        f"changed {changes or 'nothing'}; checksums {decision['checksums']['mode']}"
        + (f"; skipped {skipped}" if skipped else "")
    )


def publish(decision: dict[str, Any], path: Path | None) -> None:
    """Log the one line and, when ``path`` is given (rank 0), write the JSON there."""
    logger.info(summary(decision))
    if path is not None:
        # a log, not state to resume from: replaced atomically for readers, but not fsynced
        # (two fsyncs would be most of what load() adds to DCP's own load)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(decision, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
