"""A source's staged result: a tar of its clips, then a JSON record written last (the
done-marker), so a rerun skips finished sources."""

from __future__ import annotations

import json
import logging
from typing import Any

from data_pipeline.sources import Source
from infra.storage import Storage
from infra.uris import join

log = logging.getLogger(__name__)


def staged_paths(staging: str, source_id: str) -> tuple[str, str]:
    """(clips tar, record json) of one source in the staging area."""
    return join(staging, f"{source_id}.tar"), join(staging, f"{source_id}.json")


def load_record(storage: Storage, staging: str, source_id: str) -> dict[str, Any] | None:
    """The staged record of one source, or None if it has none (or only an unreadable one)."""
    _, rec = staged_paths(staging, source_id)
    try:
        record = json.loads(storage.read_text(rec))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        log.warning("%s: unreadable staged record; the source is processed again", rec)
        return None
    if record.get("error"):
        record["clips"] = []  # an error row has no clips (records of older versions might)
    return record


def new_record(source: Source) -> dict[str, Any]:
    """The record of a source before any work: no probe, no clips, no error."""
    return {
        "source": source.uri,
        "rel": source.rel,
        "source_id": source.source_id,
        "version": source.version,
        "caption": source.caption,
        "error": None,
        "probe": None,
        "seconds_in": 0.0,
        "cuts": [],
        "scenes": 0,
        "dropped": {},
        "clips": [],
        "rejected": [],
        "crop": None,
    }
