"""A read-only, seekable file object over a remote object that streams it: large ranged reads,
the next ones already in flight, so a front-to-back scan (an index build) runs at the link's
bandwidth with a few chunks of memory, whatever the round trip. Libraries that read a file at
offsets of their own (pyarrow: a Parquet footer, then column chunks) read through it too, so
that every read is a request of the package's storage client (its options, retries under the
deadline, typed errors, and the ETag condition of the object's index entry)."""

from __future__ import annotations

import io
from concurrent.futures import Future

from resumable_loader.storage.client import StorageClient

CHUNK = 8 * 2**20  # bytes per ranged read
AHEAD = 3  # chunks requested past the one being read


class RemoteFile(io.RawIOBase):
    """``url`` of ``size`` bytes read through ``client`` in ``chunk``-byte ranged reads.

    Reading at an offset fetches its chunk and requests the ``ahead`` chunks after it, so a
    sequential reader never waits a round trip past the first chunk; other chunks are
    dropped. A seek elsewhere (a Parquet footer) just fetches there. ``etag``: every read is
    conditional on it (:meth:`StorageClient.read_range`).
    """

    def __init__(
        self,
        client: StorageClient,
        url: str,
        size: int,
        *,
        chunk: int = CHUNK,
        ahead: int = AHEAD,
        etag: str | None = None,
    ) -> None:
        super().__init__()
        self.client, self.url, self.size, self.etag = client, url, size, etag
        self.chunk, self.ahead = chunk, ahead
        self.name = url
        self._position = 0
        self._chunks: dict[int, Future[bytes]] = {}

    def __repr__(self) -> str:
        return f"RemoteFile({self.url!r}, size={self.size}, chunk={self.chunk})"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"{self.url}: seek to {base + offset}, before the start")
        self._position = base + offset
        return self._position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._position < self.size:
            number, at = divmod(self._position, self.chunk)
            data = self._chunk(number)
            piece = data[at : at + len(view) - done]
            if not piece:
                break
            view[done : done + len(piece)] = piece
            done += len(piece)
            self._position += len(piece)
        return done

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.size - self._position)
        buffer = bytearray(size)
        return bytes(buffer[: self.readinto(buffer)])

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        for future in self._chunks.values():
            future.cancel()
        self._chunks.clear()
        super().close()

    def _chunk(self, number: int) -> bytes:
        last = (self.size - 1) // self.chunk
        for ahead in range(number, min(number + self.ahead, last) + 1):
            if ahead not in self._chunks:
                start = ahead * self.chunk
                length = min(self.chunk, self.size - start)
                self._chunks[ahead] = self.client.submit_range(
                    self.url, start, length, etag=self.etag
                )
        for other in [n for n in self._chunks if not number <= n <= number + self.ahead]:
            self._chunks.pop(other).cancel()
        return self._chunks[number].result()
