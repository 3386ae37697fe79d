"""Object storage: one client for ranged reads of s3:// and fsspec URLs, with retries."""

from resumable_loader.storage.client import ObjectStat, StorageClient, client_for
from resumable_loader.storage.retry import RetryPolicy

__all__ = ["ObjectStat", "RetryPolicy", "StorageClient", "client_for"]
