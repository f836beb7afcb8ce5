"""The archive of an S3 service's backup, readable with standard tools after `age -d | zstd -d`:

- `objects.tar` — a POSIX (pax) tar with one member per object version, named
  `<bucket>/<sequence>` (keys can be anything up to 1 KiB, so they are not file names); the
  members come in restore order: bucket by bucket, key by key, each key's versions oldest first.
- `buckets.json` — the index: per bucket its settings and, in the same order, every version
  (key, version id, latest or not, delete marker or object; for an object its tar member, size,
  ETag, multipart part sizes, content type, headers, user metadata and tags).

The tar is written as a generator (headers from `tarfile.TarInfo`, bodies passed through), so
its memory is one chunk whatever the objects' sizes; it is read back in `tarfile`'s streaming
mode. The index is validated whole before a restore changes anything."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from temps_shared.runtime.container_io import ExecFailed

FORMAT = "temps-s3-backup"
FORMAT_VERSION = 1
OBJECTS_ARTIFACT = "objects.tar"
INDEX_ARTIFACT = "buckets.json"
OBJECTS_FORMAT = "s3-objects-tar"
INDEX_FORMAT = "s3-index-json"
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
MAX_PARTS = 10_000
# The object headers kept besides the content type and the user metadata (boto3 names).
HEADERS = ("CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage")
SETTINGS = ("versioning", "tags", "policy", "lifecycle", "cors")
_MEMBER = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[0-9]{8,}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-([0-9]+)$")
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")


class S3ArchiveError(ExecFailed):
    """The archive or the service refused the backup or the restore; the message says what.
    An `ExecFailed`, so the worker fails the command at once instead of redelivering it."""


@dataclass
class Entry:
    """One version of one key: an object (with its tar member) or a delete marker."""

    key: str
    version_id: str
    latest: bool
    delete_marker: bool
    last_modified: str = ""
    member: str = ""
    size: int = 0
    etag: str = ""  # without quotes
    parts: list[int] = field(default_factory=list)  # multipart part sizes, [] for one PUT
    content_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        common: dict[str, Any] = {
            "key": self.key,
            "version_id": self.version_id,
            "latest": self.latest,
            "delete_marker": self.delete_marker,
            "last_modified": self.last_modified,
        }
        if self.delete_marker:
            return common
        return {
            **common,
            "member": self.member,
            "size": self.size,
            "etag": self.etag,
            "parts": self.parts,
            "content_type": self.content_type,
            "headers": self.headers,
            "metadata": self.metadata,
            "tags": self.tags,
        }


@dataclass
class BucketIndex:
    name: str
    settings: dict[str, Any]  # SETTINGS; None where the bucket has none (or the store lacks it)
    entries: list[Entry] = field(default_factory=list)  # restore order

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "settings": self.settings,
            "entries": [e.to_json() for e in self.entries],
        }


def member_name(bucket: str, sequence: int) -> str:
    return f"{bucket}/{sequence:08d}"


def plain_etag(etag: str) -> str:
    return etag.strip('"')


def multipart_count(etag: str) -> int:
    """The number of parts an ETag says the object was uploaded in (0: a single PUT)."""
    match = _MULTIPART_ETAG.match(plain_etag(etag))
    return int(match.group(1)) if match else 0


# --- figures ---------------------------------------------------------------------------------


def bucket_figures(versions: Iterable[tuple[str, str | None]]) -> dict[str, Any]:
    """Object count, delete-marker count and a digest of every (key, ETag) in restore order
    (None: a delete marker). Version ids are left out: a restore cannot choose them."""
    digest = hashlib.sha256()
    objects = markers = 0
    for key, etag in versions:
        if etag is None:
            markers += 1
        else:
            objects += 1
        digest.update(json.dumps([key, etag and plain_etag(etag)]).encode() + b"\n")
    return {"objects": objects, "delete_markers": markers, "etags_sha256": digest.hexdigest()}


def service_figures(buckets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every bucket's figures, and a one-line `_summary` (informational, never compared)."""
    objects = sum(b["objects"] for b in buckets.values())
    markers = sum(b["delete_markers"] for b in buckets.values())
    return {
        "_summary": f"{len(buckets)} buckets, {objects} object versions and {markers} delete "
        "markers with their ETags, in order",
        "buckets": buckets,
    }


def index_figures(buckets: Iterable[BucketIndex]) -> dict[str, Any]:
    return service_figures(
        {
            b.name: bucket_figures((e.key, None if e.delete_marker else e.etag) for e in b.entries)
            for b in buckets
        }
    )


# --- writing ---------------------------------------------------------------------------------


def tar_header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, int(mtime), 0o644, tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def tar_padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def tar_end(written: int) -> bytes:
    """Two zero blocks, then zeros up to a whole record (as `tarfile` ends a stream)."""
    end = 2 * BLOCK
    return b"\0" * (end + (-(written + end) % RECORD))


class TarWriter:
    """Counts what it produced, so the end can be padded to a whole record."""

    def __init__(self) -> None:
        self.written = 0

    def member(self, name: str, size: int, mtime: float, body: Iterable[bytes]) -> Iterator[bytes]:
        """The member's bytes; raises `S3ArchiveError` if `body` is not exactly `size` long."""
        header = tar_header(name, size, mtime)
        self.written += len(header)
        yield header
        sent = 0
        for chunk in body:
            sent += len(chunk)
            if sent > size:
                raise S3ArchiveError(f"{name}: the object is longer than its {size} bytes")
            self.written += len(chunk)
            yield chunk
        if sent != size:
            raise S3ArchiveError(f"{name}: the object ended after {sent} of {size} bytes")
        padding = tar_padding(size)
        self.written += len(padding)
        yield padding

    def end(self) -> bytes:
        tail = tar_end(self.written)
        self.written += len(tail)
        return tail


def index_document(buckets: list[BucketIndex], taken_at: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "taken_at": taken_at,
        "buckets": [b.to_json() for b in buckets],
    }


def index_chunks(document: dict[str, Any], chunk: int = 1 << 20) -> Iterator[bytes]:
    """The index as JSON, encoded piece by piece."""
    pending: list[bytes] = []
    size = 0
    for piece in json.JSONEncoder(indent=1, ensure_ascii=False).iterencode(document):
        data = piece.encode()
        pending.append(data)
        size += len(data)
        if size >= chunk:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


# --- reading ---------------------------------------------------------------------------------


def _fail(where: str, what: str) -> S3ArchiveError:
    return S3ArchiveError(f"malformed S3 backup index: {where}: {what}")


def _string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _fail(where, "expected an object of strings")
    return dict(value)


def _entry(raw: Any, where: str) -> Entry:
    if not isinstance(raw, dict):
        raise _fail(where, "expected an object")
    key, version_id = raw.get("key"), raw.get("version_id")
    if not isinstance(key, str) or not key or len(key.encode()) > 1024:
        raise _fail(where, "key must be a string of 1 to 1024 bytes")
    if not isinstance(version_id, str) or not isinstance(raw.get("last_modified", ""), str):
        raise _fail(where, "version_id and last_modified must be strings")
    latest, marker = raw.get("latest"), raw.get("delete_marker")
    if not isinstance(latest, bool) or not isinstance(marker, bool):
        raise _fail(where, "latest and delete_marker must be booleans")
    entry = Entry(key, version_id, latest, marker, raw.get("last_modified", ""))
    if marker:
        return entry
    member, size, etag, parts = (
        raw.get("member"),
        raw.get("size"),
        raw.get("etag"),
        raw.get("parts"),
    )
    if not isinstance(member, str) or not _MEMBER.match(member):
        raise _fail(where, f"invalid tar member name {member!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _fail(where, "size must be a non-negative integer")
    if not isinstance(etag, str) or not isinstance(raw.get("content_type"), str):
        raise _fail(where, "etag and content_type must be strings")
    if (
        not isinstance(parts, list)
        or len(parts) > MAX_PARTS
        or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in parts)
        or (parts and sum(parts) != size)
    ):
        raise _fail(where, "parts must be positive sizes adding up to the object's size")
    headers = _string_map(raw.get("headers"), where + ".headers")
    if set(headers) - set(HEADERS):
        raise _fail(where, f"unknown headers {sorted(set(headers) - set(HEADERS))}")
    entry.member, entry.size, entry.etag, entry.parts = member, size, etag, list(parts)
    entry.content_type, entry.headers = raw["content_type"], headers
    entry.metadata = _string_map(raw.get("metadata"), where + ".metadata")
    entry.tags = _string_map(raw.get("tags"), where + ".tags")
    return entry


def _settings(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or set(raw) != set(SETTINGS):
        raise _fail(where, f"settings must have exactly {list(SETTINGS)}")
    if raw["versioning"] not in (None, "Enabled", "Suspended"):
        raise _fail(where, f"unknown versioning status {raw['versioning']!r}")
    if raw["tags"] is not None:
        _string_map(raw["tags"], where + ".tags")
    if raw["policy"] is not None and not isinstance(raw["policy"], str):
        raise _fail(where, "policy must be a JSON string")
    for name in ("lifecycle", "cors"):
        rules = raw[name]
        if rules is not None and not (
            isinstance(rules, list) and all(isinstance(r, dict) for r in rules)
        ):
            raise _fail(where, f"{name} must be a list of rules")
    return dict(raw)


def parse_index(document: Any) -> list[BucketIndex]:
    """The buckets of an index document; raises `S3ArchiveError` naming what is wrong."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _fail("document", f"not a {FORMAT} index")
    if document.get("format_version") != FORMAT_VERSION:
        raise _fail("document", f"format_version {document.get('format_version')!r} unknown")
    raw_buckets = document.get("buckets")
    if not isinstance(raw_buckets, list):
        raise _fail("document", "buckets must be a list")
    buckets: list[BucketIndex] = []
    names: set[str] = set()
    members: set[str] = set()
    for n, raw in enumerate(raw_buckets):
        where = f"buckets[{n}]"
        if not isinstance(raw, dict):
            raise _fail(where, "expected an object")
        name = raw.get("name")
        if not isinstance(name, str) or not _BUCKET.match(name) or name in names:
            raise _fail(where, f"invalid or repeated bucket name {name!r}")
        names.add(name)
        if not isinstance(raw.get("entries"), list):
            raise _fail(where, "entries must be a list")
        bucket = BucketIndex(name, _settings(raw.get("settings"), where + ".settings"))
        for m, raw_entry in enumerate(raw["entries"]):
            entry = _entry(raw_entry, f"{where}.entries[{m}]")
            if not entry.delete_marker:
                if not entry.member.startswith(name + "/") or entry.member in members:
                    raise _fail(f"{where}.entries[{m}]", f"member {entry.member!r} misplaced")
                members.add(entry.member)
            bucket.entries.append(entry)
        buckets.append(bucket)
    return buckets


def load_index(stream: IO[bytes]) -> list[BucketIndex]:
    try:
        document = json.load(stream)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail("document", f"not JSON ({exc})") from exc
    return parse_index(document)


def tar_members(
    stream: IO[bytes], entries: Iterable[Entry]
) -> Iterator[tuple[Entry, IO[bytes] | None]]:
    """Each entry with its body read from the tar in streaming mode (None for a delete marker);
    raises `S3ArchiveError` when the tar does not hold exactly the index's objects, in order.
    A body must be read (or left) before the next item is asked for."""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for entry in entries:
                if entry.delete_marker:
                    yield entry, None
                    continue
                member = tar.next()
                if member is None:
                    raise S3ArchiveError(
                        f"objects.tar ends before {entry.member} (key {entry.key})"
                    )
                if member.name != entry.member or not member.isreg() or member.size != entry.size:
                    raise S3ArchiveError(
                        f"objects.tar holds {member.name} ({member.size} bytes) where the index "
                        f"expects {entry.member} ({entry.size} bytes)"
                    )
                body = tar.extractfile(member)
                assert body is not None  # a regular file
                yield entry, body
            extra = tar.next()
            if extra is not None:
                raise S3ArchiveError(f"objects.tar holds {extra.name}, which the index lacks")
    except tarfile.TarError as exc:
        raise S3ArchiveError(f"objects.tar is not a readable tar: {exc}") from exc


def check_body(entry: Entry, body: IO[bytes], chunk: int = 1 << 20) -> None:
    """Read a body to its end; for an object put in one request, check it against its ETag
    (the MD5 of its bytes)."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    while data := body.read(chunk):
        digest.update(data)
        size += len(data)
    if size != entry.size:
        raise S3ArchiveError(f"{entry.member}: {size} bytes where the index says {entry.size}")
    etag = plain_etag(entry.etag)
    if not entry.parts and _MD5_ETAG.match(etag) and digest.hexdigest() != etag:
        raise S3ArchiveError(
            f"{entry.member} (key {entry.key}): its MD5 {digest.hexdigest()} is not its ETag {etag}"
        )
