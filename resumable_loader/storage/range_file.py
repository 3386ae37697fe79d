"""A read-only, seekable file over one object in storage, each read one ranged request.

For libraries that read a file themselves at offsets they choose (pyarrow reading a Parquet
file's footer and column chunks): given this instead of an fsspec file, their reads go through
the package's storage client, with its options, its retries under the deadline (whose jitter
never draws from the global RNGs the loader seeds per sample), its typed errors, and the ETag
condition of the object's index entry.
"""

from __future__ import annotations

import io
import os
from typing import Any

from resumable_loader.storage.client import StorageClient


class RangeFile(io.RawIOBase):
    """``size`` bytes of ``url``, read through ``client`` (``etag``: as
    :meth:`StorageClient.read_range` takes it)."""

    def __init__(
        self, client: StorageClient, url: str, size: int, *, etag: str | None = None
    ) -> None:
        super().__init__()
        self.client, self.url, self.size, self.etag = client, url, size, etag
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        length = max(0, min(len(view), self.size - self.position))
        if not length:
            return 0
        data = self.client.read_range(self.url, self.position, length, etag=self.etag)
        view[: len(data)] = data
        self.position += len(data)
        return len(data)

    def __repr__(self) -> str:
        return f"RangeFile({self.url!r}, size={self.size})"
