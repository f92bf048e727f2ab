"""A version's metadata: kept in Redis, and in its blob's header so the store can rebuild it.

Blob names carry the version, its kind and the sha256 of the bytes
(``v0000000042.delta.<sha256>.safetensors``): two different blobs never share a name, so
no write can replace another version's file, whatever state Redis is in (a reset
sequence handing out a number again, two registries pointed at one store).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from online_models.registry.blobs import INFO, BlobFormatError, BlobHeader

_NAME = re.compile(r"^v(\d{10})\.(snapshot|delta)(?:\.([0-9a-f]{64}))?\.safetensors$")


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """A version's metadata as stored in Redis."""

    version: int
    kind: str  # "snapshot" | "delta"
    parent: int | None
    file: str
    sha256: str
    size_bytes: int
    created_ms: int
    n_items: int
    examples_seen: int = 0
    source: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)

    def to_redis(self) -> dict[str, str]:
        return {
            "version": str(self.version),
            "kind": self.kind,
            "parent": "" if self.parent is None else str(self.parent),
            "file": self.file,
            "sha256": self.sha256,
            "size_bytes": str(self.size_bytes),
            "created_ms": str(self.created_ms),
            "n_items": str(self.n_items),
            "examples_seen": str(self.examples_seen),
            "source": self.source,
            "metrics": json.dumps(self.metrics),
            "offsets": json.dumps(self.offsets),
        }

    @classmethod
    def from_redis(cls, raw: dict[bytes, bytes]) -> VersionInfo:
        data = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            version=int(data["version"]),
            kind=data["kind"],
            parent=int(data["parent"]) if data.get("parent") else None,
            file=data["file"],
            sha256=data["sha256"],
            size_bytes=int(data["size_bytes"]),
            created_ms=int(data["created_ms"]),
            n_items=int(data["n_items"]),
            examples_seen=int(data.get("examples_seen") or 0),
            source=data.get("source", ""),
            metrics=json.loads(data.get("metrics") or "{}"),
            offsets=json.loads(data.get("offsets") or "{}"),
        )

    def header_info(self) -> str:
        """What the blob's header keeps of this metadata (the rest is the blob itself)."""
        return json.dumps(
            {
                "created_ms": self.created_ms,
                "examples_seen": self.examples_seen,
                "source": self.source,
                "metrics": self.metrics,
                "offsets": self.offsets,
            }
        )

    @classmethod
    def from_header(
        cls, header: BlobHeader, file: str, sha256: str, size_bytes: int
    ) -> VersionInfo:
        """The metadata of a stored blob, read back from its header (Redis lost it)."""
        try:
            info = json.loads(header.metadata.get(INFO) or "{}")
            parent = header.metadata.get("parent")
            n_items = header.n_ids
            if header.kind == "delta":
                n_items += header.int_field("start_row")
            return cls(
                version=header.int_field("version"),
                kind=header.kind,
                parent=int(parent) if parent else None,
                file=file,
                sha256=sha256,
                size_bytes=size_bytes,
                created_ms=int(info.get("created_ms", 0)),
                n_items=n_items,
                examples_seen=int(info.get("examples_seen", 0)),
                source=str(info.get("source", "")),
                metrics={str(k): float(v) for k, v in dict(info.get("metrics", {})).items()},
                offsets={str(k): int(v) for k, v in dict(info.get("offsets", {})).items()},
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise BlobFormatError(f"unreadable version metadata in {file}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Publication:
    """The outcome of a publish: the version, and whether it became current.

    A publish that lost its compare-and-set keeps nothing (no metadata, no file), so its
    ``version`` is 0.
    """

    version: int
    current: bool
    size_bytes: int


@dataclass(frozen=True, slots=True)
class BlobName:
    """What a blob's file name says: version, kind and (new names) the sha256 of its bytes."""

    version: int
    kind: str
    sha256: str | None

    @classmethod
    def parse(cls, name: str) -> BlobName | None:
        """``None`` for a file that is not a blob (a temporary file, anything else)."""
        match = _NAME.match(name)
        if match is None:
            return None
        return cls(int(match.group(1)), match.group(2), match.group(3))

    def __str__(self) -> str:
        digest = f".{self.sha256}" if self.sha256 else ""
        return f"v{self.version:010d}.{self.kind}{digest}.safetensors"
