"""Locations as spacetime spells them: local paths (relative, absolute, `file://`) and `s3://bucket/key`
URIs, joined, normalised and compared the same way for both."""

from __future__ import annotations

import os
from pathlib import Path


class UnsafeKey(ValueError):
    """An object key that would write outside the folder it is downloaded into."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> (`bucket`, `a/b`)."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri}")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri}: missing bucket name")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Joins path components for local paths and S3 URIs alike."""
    if is_s3(base):
        out = base.rstrip("/")
        for p in parts:
            out = f"{out}/{p.strip('/')}"
        return out
    return str(Path(base, *parts))


def _local(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


def normalize(uri: str) -> str:
    """One spelling per location: local paths (relative, `./x`, `file://`) become absolute, so a
    job's records and its Ray workers agree whatever the caller's working directory; S3 URIs lose
    a trailing slash."""
    if is_s3(uri):
        return uri.rstrip("/") if uri.rstrip("/") != "s3:/" else uri
    return os.path.abspath(_local(uri))


def relative_to(root: str, uri: str) -> str:
    """`uri`'s path below `root` with `/` separators (`a/x.mp4`), whichever way either is spelled
    (relative, absolute, `file://`, S3). ValueError when `uri` is not below `root`."""
    if is_s3(root) != is_s3(uri):
        raise ValueError(f"{uri} is not under {root}")
    if is_s3(root):
        base = root.rstrip("/") + "/"
        if not uri.startswith(base):
            raise ValueError(f"{uri} is not under {root}")
        return uri[len(base) :]
    rel = os.path.relpath(os.path.abspath(_local(uri)), os.path.abspath(_local(root)))
    if rel == "." or rel == ".." or rel.startswith("../") or os.path.isabs(rel):
        raise ValueError(f"{uri} is not under {root}")
    return rel.replace(os.sep, "/")


def safe_relpath(rel: str, where: str) -> str:
    """`rel` if it is a plain relative path; an object key with `..`, an absolute path or an empty
    part would write outside the folder it is downloaded into. `where` names it in the error."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UnsafeKey(f"{where}: refusing the key {rel!r} (not a plain relative path)")
    return rel
