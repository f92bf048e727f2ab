"""The directory of version blobs (``ModelSettings.store_dir``): write, read, list, remove.

Writes are atomic (temporary file, fsync, rename), so a reader sees a whole blob or none;
names carry the blob's sha256 (``version_info.BlobName``), so a write never replaces a
different blob; every read checks the sha256.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from online_models.registry.blobs import (
    BlobFormatError,
    BlobHeader,
    header_length,
    read_header,
    sha256_hex,
)
from online_models.registry.version_info import BlobName


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A blob file found in the store."""

    name: BlobName
    file: str
    size_bytes: int


class BlobStore:
    """One store directory (created on the first write)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def write(self, name: BlobName, blob: bytes) -> str:
        """Store ``blob`` under ``name``; returns the file name."""
        file = str(name)
        write_atomically(self.directory / file, blob)
        return file

    def read(self, file: str, sha256: str) -> bytes:
        """The blob's bytes; ``BlobFormatError`` when they are not the ones published."""
        blob = (self.directory / file).read_bytes()
        if sha256_hex(blob) != sha256:
            raise BlobFormatError(f"sha256 mismatch for {file}")
        return blob

    def read_header(self, file: str) -> BlobHeader:
        """A blob's header, checked against the file's length, without reading its tensors."""
        path = self.directory / file
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            head = prefix + handle.read(min(header_length(prefix), max(size - 8, 0)))
        return read_header(head, size)

    def sha256(self, file: str) -> str:
        return sha256_hex((self.directory / file).read_bytes())

    def remove(self, file: str) -> None:
        (self.directory / file).unlink(missing_ok=True)

    def blobs(self) -> list[StoredBlob]:
        """Every blob in the store, by version (temporary and foreign files are left out)."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in os.scandir(self.directory):
            name = BlobName.parse(entry.name)
            if name is not None and entry.is_file():
                found.append(StoredBlob(name, entry.name, entry.stat().st_size))
        return sorted(found, key=lambda blob: blob.name.version)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either nothing or all of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
