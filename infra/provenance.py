"""What an output was made from: the settings a job records beside its output and checks on rerun.

A rerun into the same output resumes only when every recorded setting is the same; otherwise the
job stops with an error naming each setting that differs (then and now) and the flag that starts
over. Work made with other settings is never silently reused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from infra.errors import JobError
from infra.storage import Storage
from infra.uris import join


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: one name per setting, as --set spells it."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: then -> now` for every setting that differs (JSON-normalised, so tuples equal lists)."""
    a, b = json.loads(json.dumps(then)), json.loads(json.dumps(now))
    return [
        f"{k}: {a.get(k, '(unset)')!r} then, {b.get(k, '(unset)')!r} now"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def check_or_record(
    storage: Storage, uri: str, settings: dict[str, Any], output: str, start_over: str
) -> bool:
    """Records `settings` at `uri` on the first run (returns True); on a rerun, raises JobError
    unless they equal the recorded ones (returns False)."""
    settings = flatten(settings)
    try:
        prev = json.loads(storage.read_text(uri))
    except FileNotFoundError:
        storage.write_text(uri, json.dumps({"settings": settings}, indent=2, sort_keys=True))
        return True
    except json.JSONDecodeError:
        prev = {}
    diff = differences(prev.get("settings", {"(record)": "unreadable or older format"}), settings)
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise JobError(
            f"{output} holds output made with other settings ({shown}); rerun with {start_over} "
            "to start over, or write to another output"
        )
    return False


def finish_job(
    storage: Storage,
    output: str,
    summary: dict[str, Any],
    logger: logging.Logger,
    line: str,
    nothing: str | None = None,
) -> dict[str, Any]:
    """The end every job shares: `summary.json` beside the output, one summary line on the console,
    and a JobError (non-zero exit) with `nothing` when the job produced nothing at all."""
    storage.write_text(join(output, "summary.json"), json.dumps(summary, indent=2, sort_keys=True))
    logger.info("%s", line)
    if nothing:
        raise JobError(nothing)
    return summary


@dataclass(frozen=True)
class Rerun:
    """What a job does with an output that an earlier run (finished or killed) left."""

    overwrite: bool = False
    """Delete what the earlier run wrote (and only that) and start over."""
    retry_failed: bool = True
    """Process again the items that failed before (else keep their errors)."""


RESUME = Rerun()
"""The default: resume, and try failed items again."""
