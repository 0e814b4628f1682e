"""infra.storage against local paths and a real S3 HTTP endpoint (moto's server on loopback)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import pytest

from infra.config import dump_yaml
from infra.log import REDACTED, RedactingFilter, redact_env
from infra.schema import SpacetimeConfig
from infra.storage import Storage, StorageError
from infra.storage_config import StorageConfig
from infra.uris import join
from tests.conftest import free_port
from tests.faultproxy import FaultProxy


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Storage, str]:
    if request.param == "local":
        return Storage(), str(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return Storage(StorageConfig(s3_endpoint_url=endpoint)), f"s3://{bucket}/root"


def test_write_read_list_delete(where: tuple[Storage, str], tmp_path: Path) -> None:
    store, root = where
    a, b = join(root, "a.txt"), join(root, "sub", "b.bin")
    store.write_text(a, "hello")
    store.write_bytes(b, b"\x00\x01" * 10)
    assert store.exists(a) and store.exists(b)
    assert not store.exists(join(root, "nope"))
    assert store.read_text(a) == "hello"
    assert store.size(b) == 20
    assert store.list(root) == sorted([a, b])
    assert store.list(root, suffix=".bin") == [b]
    with store.open_read(b) as f:
        assert f.read() == b"\x00\x01" * 10
    local = store.download(b, tmp_path / "dl" / "b.bin")
    assert local.read_bytes() == b"\x00\x01" * 10
    store.delete(a)
    assert not store.exists(a)
    store.delete(a)  # deleting a missing file is not an error
    assert store.delete_prefix(root) == 1
    assert store.list(root) == []


def test_missing_object_names_the_uri(where: tuple[Storage, str]) -> None:
    store, root = where
    missing = join(root, "missing", "x.tar")
    with pytest.raises(FileNotFoundError, match=r"missing/x\.tar"):
        store.read_bytes(missing)
    with pytest.raises(FileNotFoundError, match=r"missing/x\.tar"):
        store.size(missing)
    with pytest.raises(FileNotFoundError, match=r"missing/x\.tar"):
        store.download(missing, "/tmp/never-written")
    assert not Path("/tmp/never-written").exists()


def test_atomic_writer_publishes_whole_or_nothing(where: tuple[Storage, str]) -> None:
    store, root = where
    target = join(root, "shard.tar")
    with store.atomic_writer(target) as path:
        path.write_bytes(b"first")
        # While writing, the target is not visible and listing shows no temporary file.
        assert not store.exists(target)
        assert store.list(root) == []
    assert store.read_bytes(target) == b"first"

    with pytest.raises(RuntimeError, match="boom"), store.atomic_writer(target) as path:
        path.write_bytes(b"half-written")
        raise RuntimeError("boom")
    assert store.read_bytes(target) == b"first"  # the failed write left the old one intact
    assert store.list(root) == [target]


def test_upload_local_file(where: tuple[Storage, str], tmp_path: Path) -> None:
    store, root = where
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1000))
    store.upload(src, join(root, "up.bin"))
    assert store.read_bytes(join(root, "up.bin")) == src.read_bytes()
    with pytest.raises(FileNotFoundError, match=r"nope\.bin"):
        store.upload(tmp_path / "nope.bin", join(root, "x"))


def test_s3_multipart_upload_20mib(s3_server: str, s3_bucket: str, tmp_path: Path) -> None:
    store = Storage(
        StorageConfig(s3_endpoint_url=s3_server, multipart_threshold_mb=5, multipart_chunk_mb=5)
    )
    src = tmp_path / "big.bin"
    data = os.urandom(21 * 1024 * 1024)
    src.write_bytes(data)
    uri = f"s3://{s3_bucket}/big/big.bin"
    store.upload(src, uri)
    head = store.s3.head_object(Bucket=s3_bucket, Key="big/big.bin")
    # A multipart object's ETag is "<md5-of-md5s>-<parts>": 21 MiB in 5 MiB parts is 5 parts.
    assert head["ETag"].strip('"').endswith("-5")
    out = store.download(uri, tmp_path / "back.bin")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_s3_missing_bucket_is_a_clear_error(s3_server: str) -> None:
    store = Storage(StorageConfig(s3_endpoint_url=s3_server))
    with pytest.raises(StorageError, match=r"bucket 'no-such-bucket-x' does not exist"):
        store.write_bytes("s3://no-such-bucket-x/k", b"x")
    with pytest.raises(StorageError, match="no-such-bucket-x"):
        store.list("s3://no-such-bucket-x/prefix")


def test_s3_unreachable_endpoint_fails_naming_uri() -> None:
    port = free_port()  # nothing listens here
    store = Storage(
        StorageConfig(
            s3_endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2, connect_timeout_s=1
        )
    )
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"s3://b/k: S3 request failed after 2 attempts"):
        store.read_bytes("s3://b/k")
    assert time.monotonic() - t0 < 30


@pytest.fixture
def proxied(s3_server: str, s3_bucket: str):
    port = int(s3_server.rsplit(":", 1)[1])
    proxy = FaultProxy("127.0.0.1", port)
    store = Storage(
        StorageConfig(
            s3_endpoint_url=proxy.url,
            max_attempts=10,
            multipart_threshold_mb=5,
            multipart_chunk_mb=5,
        )
    )
    yield proxy, store, s3_bucket
    proxy.close()


def test_s3_retries_dropped_connections(proxied) -> None:
    proxy, store, bucket = proxied
    uri = f"s3://{bucket}/flaky/obj.bin"
    payload = os.urandom(100_000)
    proxy.drop_next(3)
    store.write_bytes(uri, payload)
    proxy.drop_next(3)
    assert store.read_bytes(uri) == payload
    assert proxy.dropped == 6


def test_s3_survives_server_outage_during_multipart_upload(proxied, tmp_path: Path) -> None:
    proxy, store, bucket = proxied
    src = tmp_path / "big.bin"
    data = os.urandom(20 * 1024 * 1024)
    src.write_bytes(data)
    uri = f"s3://{bucket}/outage/big.bin"
    # The endpoint disappears (connection refused) for 2 s when the second part arrives.
    proxy.outage_at(2, 2.0, b"PUT ")
    t0 = time.monotonic()
    store.upload(src, uri)
    assert proxy.outages == 1 and time.monotonic() - t0 >= 2.0  # the upload waited it out
    assert store.read_bytes(uri) == data


def test_credentials_never_logged_or_dumped(
    s3_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert secret  # set by the s3_server fixture
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "using key %s", (secret,), None)
    assert RedactingFilter().filter(record)
    assert secret not in record.getMessage() and REDACTED in record.getMessage()
    assert redact_env({"AWS_SECRET_ACCESS_KEY": secret, "PATH": "/bin"}) == {
        "AWS_SECRET_ACCESS_KEY": REDACTED,
        "PATH": "/bin",
    }
    cfg = SpacetimeConfig()
    cfg.storage.s3_endpoint_url = s3_server
    assert secret not in dump_yaml(cfg)
    store = Storage(cfg.storage)
    with pytest.raises(StorageError) as e:
        store.read_bytes("s3://whatever-bucket/missing")
    assert secret not in str(e.value)
