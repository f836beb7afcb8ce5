"""The S3 backup's archive without Docker: the tar written as a stream reads back with Python's
`tarfile` and GNU tar; the index round-trips and a malformed one is refused naming what is
wrong; a tar that does not match its index is refused; the listing keeps S3's order."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pyrage
import pytest
from temps_shared.backups import s3_archive
from temps_shared.backups.codec import encode
from temps_shared.backups.s3 import _decoded, _keep_listing_order, _list_versions
from temps_shared.backups.s3_archive import (
    BucketIndex,
    Entry,
    S3ArchiveError,
    TarWriter,
    check_body,
    index_chunks,
    index_document,
    index_figures,
    load_index,
    member_name,
    tar_members,
)

SETTINGS = {"versioning": "Enabled", "tags": {"team": "a"}, "policy": None,
            "lifecycle": None, "cors": None}  # fmt: skip


def _object(bucket: str, n: int, key: str, body: bytes, **extra: Any) -> Entry:
    return Entry(
        key=key,
        version_id=f"v{n}",
        latest=extra.pop("latest", True),
        delete_marker=False,
        member=member_name(bucket, n),
        size=len(body),
        etag=hashlib.md5(body, usedforsecurity=False).hexdigest(),
        content_type="text/plain",
        **extra,
    )


def _archive() -> tuple[list[BucketIndex], dict[str, bytes], bytes]:
    """Two buckets (one with versions of a key and a delete marker), the bodies by member,
    and the tar as the writer streams it, chunk by chunk."""
    bodies = {
        "alpha/00000001": b"first",
        "alpha/00000002": b"second version" * 1000,
        "alpha/00000003": b"",  # empty objects are members too
        "beta-2/00000004": bytes(range(256)) * 41,
    }
    alpha = BucketIndex("alpha", dict(SETTINGS))
    alpha.entries = [
        _object("alpha", 1, "k", bodies["alpha/00000001"], latest=False, metadata={"n": "1"}),
        _object("alpha", 2, "k", bodies["alpha/00000002"], latest=False, tags={"t": "1"}),
        Entry("k", "v-dm", True, True),
        _object("alpha", 3, "dir/empty", b"", headers={"CacheControl": "no-cache"}),
    ]
    beta = BucketIndex("beta-2", {**SETTINGS, "versioning": None, "tags": None})
    beta.entries = [_object("beta-2", 4, "ünï cödé/+key", bodies["beta-2/00000004"])]
    writer = TarWriter()
    chunks: list[bytes] = []
    for entry in [*alpha.entries, *beta.entries]:
        if not entry.delete_marker:
            body = bodies[entry.member]
            pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
            chunks.extend(writer.member(entry.member, entry.size, 1_700_000_000, pieces))
    chunks.append(writer.end())
    return [alpha, beta], bodies, b"".join(chunks)


def _index_bytes(buckets: list[BucketIndex]) -> bytes:
    return b"".join(index_chunks(index_document(buckets, "2026-12-03T00:00:00+00:00"), chunk=64))


def test_the_streamed_tar_reads_back_with_tarfile_and_gnu_tar(tmp_path: Path) -> None:
    buckets, bodies, tar_bytes = _archive()
    assert len(tar_bytes) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        found = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert found == bodies
    archive = tmp_path / "objects.tar"
    archive.write_bytes(tar_bytes)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(tmp_path)], check=True, timeout=30)
    for name, body in bodies.items():
        assert (tmp_path / name).read_bytes() == body

    # Read back in streaming mode against the index: every entry, bodies in order.
    parsed = load_index(io.BytesIO(_index_bytes(buckets)))
    seen: list[tuple[str, str | None]] = []
    for entry, stream in tar_members(io.BytesIO(tar_bytes), [e for b in parsed for e in b.entries]):
        if stream is None:
            seen.append((entry.key, None))
        else:
            check_body(entry, stream)
            seen.append((entry.key, entry.member))
    assert seen == [
        ("k", "alpha/00000001"),
        ("k", "alpha/00000002"),
        ("k", None),
        ("dir/empty", "alpha/00000003"),
        ("ünï cödé/+key", "beta-2/00000004"),
    ]


def test_the_index_round_trips_and_figures_match() -> None:
    buckets, _, _ = _archive()
    parsed = load_index(io.BytesIO(_index_bytes(buckets)))
    assert [b.to_json() for b in parsed] == [b.to_json() for b in buckets]
    figures = index_figures(parsed)
    assert figures == json.loads(json.dumps(figures))  # JSON-serialisable
    assert figures["buckets"]["alpha"]["objects"] == 3
    assert figures["buckets"]["alpha"]["delete_markers"] == 1
    assert figures["buckets"]["beta-2"]["objects"] == 1
    # The digest follows content (ETags) and order, not version ids.
    reordered = copy.deepcopy(parsed)
    reordered[0].entries[0], reordered[0].entries[1] = (
        reordered[0].entries[1], reordered[0].entries[0])  # fmt: skip
    assert index_figures(reordered) != figures
    renumbered = copy.deepcopy(parsed)
    for entry in renumbered[0].entries:
        entry.version_id = "other"
    assert index_figures(renumbered) == figures


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d.update(format="zip"), "not a temps-s3-backup index"),
        (lambda d: d.update(format_version=9), "format_version 9 unknown"),
        (lambda d: d["buckets"][0].update(name="Bad_Name"), "invalid or repeated bucket name"),
        (lambda d: d["buckets"][1].update(name="alpha"), "invalid or repeated bucket name"),
        (lambda d: d["buckets"][0]["entries"][0].update(member="../x"), "invalid tar member"),
        (lambda d: d["buckets"][0]["entries"][0].update(member="beta-2/00000004"), "misplaced"),
        (lambda d: d["buckets"][0]["entries"][0].update(size=-1), "size must be"),
        (lambda d: d["buckets"][0]["entries"][0].update(parts=[1, 1]), "parts must be"),
        (lambda d: d["buckets"][0]["entries"][0].update(metadata={"n": 1}), "object of strings"),
        (lambda d: d["buckets"][0]["entries"][0].update(key=""), "key must be"),
        (lambda d: d["buckets"][0]["settings"].update(versioning="On"), "versioning status"),
        (lambda d: d["buckets"][0]["settings"].pop("cors"), "settings must have exactly"),
        (lambda d: d["buckets"][0]["entries"][3]["headers"].update(X="y"), "unknown headers"),
    ],
)
def test_a_malformed_index_is_refused_naming_what(damage: Any, message: str) -> None:
    buckets, _, _ = _archive()
    document = json.loads(_index_bytes(buckets))
    damage(document)
    with pytest.raises(S3ArchiveError, match=message):
        load_index(io.BytesIO(json.dumps(document).encode()))
    with pytest.raises(S3ArchiveError, match="not JSON"):
        load_index(io.BytesIO(b"{not json"))


def _walk(tar_bytes: bytes, buckets: list[BucketIndex]) -> None:
    for entry, body in tar_members(io.BytesIO(tar_bytes), [e for b in buckets for e in b.entries]):
        if body is not None:
            check_body(entry, body)


def test_a_tar_that_does_not_match_its_index_is_refused() -> None:
    buckets, _, tar_bytes = _archive()
    _walk(tar_bytes, buckets)

    missing = copy.deepcopy(buckets)
    missing[1].entries.append(_object("beta-2", 5, "later", b"x"))
    with pytest.raises(S3ArchiveError, match="ends before beta-2/00000005"):
        _walk(tar_bytes, missing)

    extra = copy.deepcopy(buckets)
    extra[1].entries.clear()
    with pytest.raises(S3ArchiveError, match="holds beta-2/00000004, which the index lacks"):
        _walk(tar_bytes, extra)

    swapped = copy.deepcopy(buckets)
    swapped[0].entries[0], swapped[0].entries[1] = swapped[0].entries[1], swapped[0].entries[0]
    with pytest.raises(S3ArchiveError, match="where the index expects alpha/00000002"):
        _walk(tar_bytes, swapped)

    tampered = bytearray(tar_bytes)
    at = tar_bytes.index(b"first")
    tampered[at] = ord("F")
    with pytest.raises(S3ArchiveError, match="is not its ETag"):
        _walk(bytes(tampered), buckets)

    with pytest.raises(S3ArchiveError, match="not a readable tar"):
        _walk(tar_bytes[:700], buckets)


def test_the_writer_refuses_a_body_of_another_size() -> None:
    with pytest.raises(S3ArchiveError, match="ended after 3 of 5 bytes"):
        list(TarWriter().member("a/00000001", 5, 0, [b"abc"]))
    with pytest.raises(S3ArchiveError, match="longer than its 2 bytes"):
        list(TarWriter().member("a/00000001", 2, 0, [b"abc"]))


LISTING = """<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>
<Version><Key>a</Key><VersionId>1</VersionId><IsLatest>true</IsLatest><ETag>"e1"</ETag></Version>
<DeleteMarker><Key>k</Key><VersionId>dm2</VersionId><IsLatest>true</IsLatest></DeleteMarker>
<Version><Key>k</Key><VersionId>v3</VersionId><IsLatest>false</IsLatest></Version>
<DeleteMarker><Key>k</Key><VersionId>dm4</VersionId><IsLatest>false</IsLatest></DeleteMarker>
<Version><Key>k</Key><VersionId>v5</VersionId><IsLatest>false</IsLatest></Version>
</ListVersionsResult>"""


class _Response:
    status_code = 200
    content = LISTING.encode()


class _FakeClient:
    """boto3's parse of LISTING: versions and delete markers apart, their order lost."""

    def list_object_versions(self, **_: Any) -> dict[str, Any]:
        when = datetime(2026, 12, 3, tzinfo=UTC)
        versions = [
            {"Key": k, "VersionId": v, "IsLatest": latest, "ETag": f'"{v}"', "Size": 1,
             "LastModified": when}
            for k, v, latest in (("a", "1", True), ("k", "v3", False), ("k", "v5", False))
        ]  # fmt: skip
        markers = [
            {"Key": "k", "VersionId": v, "IsLatest": latest, "LastModified": when}
            for v, latest in (("dm2", True), ("dm4", False))
        ]
        parsed: dict[str, Any] = {"Versions": versions, "DeleteMarkers": markers}
        _keep_listing_order(_Response(), parsed)
        return parsed


def test_the_listing_keeps_the_order_of_versions_and_delete_markers() -> None:
    listed = _list_versions(_FakeClient(), "b")
    # Oldest first per key, delete markers where they were.
    assert [(v.key, v.version_id, v.etag is None) for v in listed] == [
        ("a", "1", False),
        ("k", "v5", False),
        ("k", "dm4", True),
        ("k", "v3", False),
        ("k", "dm2", True),
    ]
    assert [v.latest for v in listed] == [True, False, False, False, True]
    assert s3_archive.multipart_count('"0123456789abcdef0123456789abcdef-7"') == 7
    assert s3_archive.multipart_count('"0123456789abcdef0123456789abcdef"') == 0


def _opener(stored: bytes) -> Any:
    @contextlib.contextmanager
    def open_artifact(entry: dict[str, Any]) -> Iterator[IO[bytes]]:
        yield io.BytesIO(stored)

    return open_artifact


def test_the_encrypted_tar_is_read_through_a_pipe_and_stops_cleanly() -> None:
    """As a restore reads it: decrypted and decompressed by a thread into a pipe; a reader
    that stops early ends the thread without an error; a wrong key is named."""
    buckets, _, tar_bytes = _archive()
    identity = pyrage.x25519.Identity.generate()
    sink = io.BytesIO()
    encode(iter([tar_bytes]), str(identity.to_public()), sink)
    artifact = {"name": "objects.tar.zst.age"}
    entries = [e for b in buckets for e in b.entries]
    with _decoded(_opener(sink.getvalue()), artifact, str(identity)) as stream:
        for entry, body in tar_members(stream, entries):
            if body is not None:
                check_body(entry, body)
    large = io.BytesIO()  # more than a pipe holds: the thread is blocked writing when closed
    encode(iter([os.urandom(4 << 20)]), str(identity.to_public()), large)
    with _decoded(_opener(large.getvalue()), artifact, str(identity)) as stream:
        assert len(stream.read(512)) == 512
    other = pyrage.x25519.Identity.generate()
    with (
        pytest.raises(S3ArchiveError, match=r"objects\.tar\.zst\.age cannot be read"),
        _decoded(_opener(sink.getvalue()), artifact, str(other)) as stream,
    ):
        stream.read()
