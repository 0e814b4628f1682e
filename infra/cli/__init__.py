"""The `spacetime` command line (an entry, above the stages): the parser, the subcommand handlers,
the configuration schema and its presets."""

from __future__ import annotations

import logging
import os
import sys

from infra.cli.parser import build_parser
from infra.config import ConfigError
from infra.errors import JobError
from infra.log import setup_logging
from infra.storage import StorageError

__all__ = ["build_parser", "main", "run"]

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


def run() -> int:
    """The process entry (the `spacetime` script and `python -m infra.cli`, which torchrun starts
    on every rank): `main`, then, after a success, the process group torn down while the
    interpreter is still whole. Left to interpreter exit, gloo's worker threads can still hold
    tensors whose release needs the GIL, and the rank dies with "terminate called without an
    active exception" (SIGABRT) after finishing its work: seen on rank 1 of a 600-step demo run,
    which torchrun then reported as failed (pytorch/pytorch#190489). Not in `main`, which tests and
    the demo call in-process and whose world of one must stay up between calls (DeepSpeed caches
    its groups); not after a failure, where a peer may be gone mid-collective.

    A rank under torchrun then leaves without the interpreter's teardown: with the group destroyed
    first, the same abort was seen once more (rank 1 of a two-host test, 2026-12-05; whether in the
    destroy or in the teardown after it is not known), and the teardown's destructors of native
    objects that still own threads need not run. Its files are closed by then (checkpoints
    published, metrics writer closed); logs and streams are flushed."""
    code = main()
    dist = sys.modules.get("torch.distributed")
    if code == 0 and dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        if os.environ.get("TORCHELASTIC_RUN_ID"):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    return code
