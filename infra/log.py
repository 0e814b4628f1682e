"""Logging for entry points. Library code only calls `logging.getLogger(__name__)`."""

from __future__ import annotations

import logging
import os
import re
import sys

# Environment variables whose values must never reach a log line, a dumped config or a script.
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "HF_TOKEN",
    "WANDB_API_KEY",
)
_SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|API_KEY|CREDENTIAL)", re.IGNORECASE)
REDACTED = "***"


def secret_values() -> list[str]:
    """Values of secret-looking environment variables, longest first (so substrings redact last)."""
    vals = {
        v
        for k, v in os.environ.items()
        if (k in SECRET_ENV_VARS or _SECRET_NAME.search(k)) and len(v) >= 4
    }
    return sorted(vals, key=len, reverse=True)


def redact(text: str) -> str:
    for v in secret_values():
        text = text.replace(v, REDACTED)
    return text


def redact_env(env: dict[str, str]) -> dict[str, str]:
    """A copy of an environment mapping with secret values replaced, for printing."""
    return {
        k: (REDACTED if k in SECRET_ENV_VARS or _SECRET_NAME.search(k) else v)
        for k, v in env.items()
    }


class RedactingFilter(logging.Filter):
    """Replaces secret values in every record; installed on the root handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def setup_logging(level: str | int = "INFO") -> None:
    """Configures the root logger once per process (entry points call this, libraries never)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_spacetime", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.addFilter(RedactingFilter())
    handler._spacetime = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    # botocore at DEBUG prints signed request headers; keep third-party chatter at WARNING.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "filelock", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
