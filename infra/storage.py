"""One interface over local paths and `s3://bucket/key` URIs.

Every stage reads and writes through `Storage`, so a job runs the same against a local folder or
an S3-compatible store. Writes are atomic: a reader never sees a partial file or object. Locally a
file is written under a temporary name in the same folder and renamed; on S3 an object (single PUT
or multipart upload) only becomes visible when it is complete.

Credentials come only from the standard AWS chain (environment, config files, instance roles); they
are never stored in a config. Transient S3 errors (connection failures, 5xx, throttling) are retried
by botocore's "standard" retry mode with exponential backoff; permanent ones raise an error that
names the URI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar

from infra.storage_config import StorageConfig
from infra.uris import _local, is_s3, split_s3

log = logging.getLogger(__name__)
R = TypeVar("R")


class Listed(NamedTuple):
    """One listed file or object."""

    uri: str
    size: int
    version: str
    """What changes when the content does: mtime in ns locally, the ETag on S3."""


def _listed(p: Path) -> Listed:
    st = p.stat()
    return Listed(str(p), st.st_size, str(st.st_mtime_ns))


class StorageError(RuntimeError):
    """A storage operation failed for a reason other than a missing object."""


class Storage:
    """Local and S3 storage behind one set of methods. Cheap to build; picklable (for Ray tasks)."""

    def __init__(self, config: StorageConfig | None = None):
        self.config = config or StorageConfig()
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.config)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = StorageConfig(**state["config"])
        self._client = None

    # ----------------------------------------------------------------- S3 plumbing
    @property
    def s3(self) -> Any:
        if self._client is None:
            import boto3  # boto3 takes ~0.5 s to import; local-only jobs never need it
            from botocore.config import Config

            c = self.config
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=c.s3_endpoint_url,
                region_name=c.s3_region,
                config=Config(
                    retries={"max_attempts": c.max_attempts, "mode": "standard"},
                    connect_timeout=c.connect_timeout_s,
                    read_timeout=c.read_timeout_s,
                ),
            )
        return self._client

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        mb = 1024 * 1024
        return TransferConfig(
            multipart_threshold=self.config.multipart_threshold_mb * mb,
            multipart_chunksize=self.config.multipart_chunk_mb * mb,
            use_threads=True,
        )

    def _call(self, uri: str, fn: Callable[[], R]) -> R:
        """Runs one S3 call, turning botocore errors into errors that name the URI."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as e:
            raise _client_error(uri, e) from None
        except BotoCoreError as e:
            raise StorageError(
                f"{uri}: S3 request failed after {self.config.max_attempts} attempts: {e}"
            ) from None

    def _retry_stream(self, uri: str, fn: Callable[[], R]) -> R:
        """Retries a whole streamed read: botocore retries the request, not a body that breaks."""
        from botocore.exceptions import (
            ConnectionClosedError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        )

        attempts = self.config.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except (
                ConnectionClosedError,
                IncompleteReadError,
                ReadTimeoutError,
                ResponseStreamingError,
            ) as e:
                if attempt == attempts:
                    raise StorageError(
                        f"{uri}: read failed after {attempts} attempts: {e}"
                    ) from None
                delay = min(20.0, 0.5 * 2 ** (attempt - 1))
                log.warning(
                    "%s: read interrupted (%s); retry %d/%d in %.1fs",
                    uri,
                    e,
                    attempt,
                    attempts - 1,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- queries
    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return _local(uri).exists()
        bucket, key = split_s3(uri)
        try:
            self._call(uri, lambda: self.s3.head_object(Bucket=bucket, Key=key))
            return True
        except FileNotFoundError:
            return False

    def size(self, uri: str) -> int:
        if not is_s3(uri):
            try:
                return _local(uri).stat().st_size
            except FileNotFoundError:
                raise FileNotFoundError(f"{uri}: no such file") from None
        bucket, key = split_s3(uri)
        head = self._call(uri, lambda: self.s3.head_object(Bucket=bucket, Key=key))
        return int(head["ContentLength"])

    def list(self, prefix: str, suffix: str = "") -> list[str]:
        """All files/objects under `prefix` (recursive), as sorted URIs, optionally by suffix.

        Temporary files of in-progress atomic writes are never listed.
        """
        return [e.uri for e in self.list_entries(prefix, suffix)]

    def list_entries(self, prefix: str, suffix: str = "") -> list[Listed]:
        """Like `list`, with each file's size and version (mtime or ETag)."""
        if not is_s3(prefix):
            root = _local(prefix)
            if root.is_file():
                return [_listed(root)]
            if not root.exists():
                return []
            out = [
                _listed(p)
                for p in root.rglob("*")
                if p.is_file() and not _is_tmp(p.name) and p.name.endswith(suffix)
            ]
            return sorted(out)
        bucket, key = split_s3(prefix)
        if key and not key.endswith("/"):
            key += "/"
        paginator = self.s3.get_paginator("list_objects_v2")

        def pages() -> list[dict[str, Any]]:
            return list(paginator.paginate(Bucket=bucket, Prefix=key))

        found = [
            Listed(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), str(obj.get("ETag", "")))
            for page in self._call(prefix, pages)
            for obj in page.get("Contents", [])
            if obj["Key"].endswith(suffix)
        ]
        return sorted(found)

    # ----------------------------------------------------------------- reads
    def read_bytes(self, uri: str) -> bytes:
        if not is_s3(uri):
            try:
                return _local(uri).read_bytes()
            except FileNotFoundError:
                raise FileNotFoundError(f"{uri}: no such file") from None
        bucket, key = split_s3(uri)

        def get() -> bytes:
            resp = self._call(uri, lambda: self.s3.get_object(Bucket=bucket, Key=key))
            return resp["Body"].read()

        return self._retry_stream(uri, get)

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """`length` bytes from offset `start` (an HTTP Range GET on S3)."""
        if not is_s3(uri):
            with _local(uri).open("rb") as f:
                f.seek(start)
                return f.read(length)
        bucket, key = split_s3(uri)
        span = f"bytes={start}-{start + length - 1}"
        resp = self._call(uri, lambda: self.s3.get_object(Bucket=bucket, Key=key, Range=span))
        return resp["Body"].read()

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[IO[bytes]]:
        """A binary stream; for S3 the object body is streamed, not buffered whole."""
        if not is_s3(uri):
            try:
                f = _local(uri).open("rb")
            except FileNotFoundError:
                raise FileNotFoundError(f"{uri}: no such file") from None
            with f:
                yield f
            return
        bucket, key = split_s3(uri)
        resp = self._call(uri, lambda: self.s3.get_object(Bucket=bucket, Key=key))
        body = resp["Body"]
        try:
            yield body
        finally:
            body.close()

    def download(self, uri: str, local_path: str | Path) -> Path:
        """Copies `uri` to a local file atomically; returns the path."""
        dst = Path(local_path)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(_tmp_name(dst.name))
        try:
            if is_s3(uri):
                bucket, key = split_s3(uri)
                self._call(
                    uri,
                    lambda: self.s3.download_file(
                        bucket, key, str(tmp), Config=self._transfer_config()
                    ),
                )
            else:
                try:
                    shutil.copyfile(_local(uri), tmp)
                except FileNotFoundError:
                    raise FileNotFoundError(f"{uri}: no such file") from None
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return dst

    # ----------------------------------------------------------------- writes
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Writes `data` atomically (all or nothing is visible)."""
        if not is_s3(uri):
            with self.atomic_writer(uri) as path:
                path.write_bytes(data)
            return
        bucket, key = split_s3(uri)
        self._call(uri, lambda: self.s3.put_object(Bucket=bucket, Key=key, Body=data))

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def upload(self, local_path: str | Path, uri: str) -> None:
        """Publishes a local file at `uri` atomically; large files go up as multipart uploads."""
        src = Path(local_path)
        if not src.is_file():
            raise FileNotFoundError(f"{src}: no such file to upload")
        if not is_s3(uri):
            with self.atomic_writer(uri) as path:
                shutil.copyfile(src, path)
            return
        bucket, key = split_s3(uri)
        self._call(
            uri,
            lambda: self.s3.upload_file(str(src), bucket, key, Config=self._transfer_config()),
        )

    @contextlib.contextmanager
    def atomic_writer(self, uri: str) -> Iterator[Path]:
        """Yields a local path to write; on success it is published at `uri`, on error discarded.

        Locally the temporary file sits beside the target and is renamed over it (atomic on POSIX);
        for S3 it is a local temporary file uploaded on exit.
        """
        if is_s3(uri):
            with tempfile.TemporaryDirectory(prefix="spacetime-upload-") as d:
                path = Path(d) / Path(split_s3(uri)[1] or "object").name
                yield path
                self.upload(path, uri)
            return
        dst = _local(uri)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(_tmp_name(dst.name))
        try:
            yield tmp
            if not tmp.exists():
                raise StorageError(f"{uri}: nothing was written to the temporary file")
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, uri: str) -> None:
        """Deletes a file/object; a missing one is not an error."""
        if not is_s3(uri):
            p = _local(uri)
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
            return
        bucket, key = split_s3(uri)
        self._call(uri, lambda: self.s3.delete_object(Bucket=bucket, Key=key))

    def delete_prefix(self, prefix: str) -> int:
        """Deletes everything under `prefix`; returns how many files/objects went."""
        uris = self.list(prefix)
        if not is_s3(prefix):
            root = _local(prefix)
            if root.exists():
                shutil.rmtree(root) if root.is_dir() else root.unlink()
            return len(uris)
        for uri in uris:
            self.delete(uri)
        return len(uris)

    def makedirs(self, uri: str) -> None:
        """Creates a local folder; S3 has no folders, so nothing to do there."""
        if not is_s3(uri):
            _local(uri).mkdir(parents=True, exist_ok=True)


_TMP_MARK = ".tmp-"


def _tmp_name(name: str) -> str:
    return f".{name}{_TMP_MARK}{uuid.uuid4().hex[:12]}"


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and _TMP_MARK in name


def _client_error(uri: str, e: Any) -> Exception:
    err = e.response.get("Error", {})
    code = str(err.get("Code", ""))
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code != "NoSuchBucket"):
        return FileNotFoundError(f"{uri}: no such object")
    if code == "NoSuchBucket":
        return StorageError(f"{uri}: bucket '{split_s3(uri)[0]}' does not exist")
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return PermissionError(f"{uri}: access denied ({code})")
    return StorageError(f"{uri}: S3 error {code or status}: {err.get('Message', '')}".rstrip(": "))
