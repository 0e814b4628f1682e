"""How `infra.storage.Storage` reaches object storage: a config section with no I/O of its own, read
by the config loader and the schema without importing boto3."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StorageConfig:
    """How to reach object storage. Local paths need none of it."""

    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (e.g. http://minio:9000). None: AWS_ENDPOINT_URL(_S3) or AWS."""
    s3_region: str | None = None
    """Region; None: the AWS chain (AWS_REGION, ~/.aws/config), else us-east-1."""
    max_attempts: int = 8
    """Attempts per S3 request, including the first (botocore standard retry mode)."""
    connect_timeout_s: float = 10.0
    """Seconds to wait for a TCP connection to the endpoint."""
    read_timeout_s: float = 60.0
    """Seconds to wait for a response before the request is retried."""
    multipart_threshold_mb: int = 64
    """Uploads at least this large use multipart upload."""
    multipart_chunk_mb: int = 16
    """Part size for multipart uploads (S3 minimum is 5 MiB)."""

    def validate(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.multipart_chunk_mb < 5:
            raise ValueError(
                f"multipart_chunk_mb must be >= 5 (S3 minimum), got {self.multipart_chunk_mb}"
            )
