"""The `spacetime` command line (an entry, above the stages): the parser, the subcommand handlers,
the configuration schema and its presets."""

from __future__ import annotations

import logging

from infra.cli.parser import build_parser
from infra.config import ConfigError
from infra.errors import JobError
from infra.log import setup_logging
from infra.storage import StorageError

__all__ = ["build_parser", "main"]

log = logging.getLogger("spacetime")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or "INFO")
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        log.error("config error: %s", e)
        return 2
    except (JobError, StorageError, FileNotFoundError, FileExistsError, ValueError) as e:
        log.error("spacetime %s: %s", args.command, e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
