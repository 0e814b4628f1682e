"""Serving the browse app with uvicorn: loopback by default, a warning for any other address."""

from __future__ import annotations

import ipaddress
import logging
import socket

import uvicorn

from infra.browse.app import make_app
from infra.browse.catalog import Catalog
from infra.storage import Storage
from infra.storage_config import StorageConfig

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def server(paths: list[str], host: str, port: int, storage_cfg: StorageConfig) -> uvicorn.Server:
    """A configured uvicorn server over the catalog of `paths` (port 0: any free port)."""
    catalog = Catalog(paths, Storage(storage_cfg))
    for i, r in enumerate(catalog.roots):
        log.info("browse: root %d is %s %s", i, r.kind, r.uri)
    if not is_loopback(host):
        log.warning(
            "browse: listening on %s, which is not a loopback address: anyone who can reach "
            "this machine can read these datasets and runs (there is no authentication)",
            host,
        )
    config = uvicorn.Config(make_app(catalog), host=host, port=port, log_level="warning")
    return uvicorn.Server(config)


def run(paths: list[str], host: str, port: int, storage_cfg: StorageConfig) -> None:
    srv = server(paths, host, port, storage_cfg)
    # Bound here, so the URL printed is the port actually bound (port 0 picks a free one).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    print(f"spacetime browse: http://{host}:{bound}/  (Ctrl-C stops)", flush=True)
    srv.run(sockets=[sock])
