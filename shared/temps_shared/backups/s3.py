"""S3 (SeaweedFS): every bucket's objects — every version, delete markers included — with their
metadata, and the buckets' settings, read over S3 with the service's admin key; restored in
place by putting the versions back oldest first (the latest stays latest) after removing every
version the service holds (a bucket the backup lacks is left empty, not deleted). Artifacts and
their format: `s3_archive`.

Consistency: S3 has no snapshot. The listing (and the bucket settings) is taken first; each
version is then read by its version id where the bucket is versioned, so what is archived is
what was listed. In an unversioned bucket an object overwritten meanwhile is archived as it is
when read (its ETag as read goes into the index and the figures); one deleted meanwhile is left
out. Version ids cannot be chosen on a PUT: restored versions get new ids, in the same order.
Memory: one chunk of object data, plus the index (a few hundred bytes per version)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any
from xml.etree import ElementTree

import boto3
import botocore.config
import botocore.exceptions
from botocore.exceptions import ClientError

from temps_shared.backups.codec import CHUNK, decode
from temps_shared.backups.protocol import (
    ArtifactSource,
    Figures,
    OpenArtifact,
    ServiceHandle,
    Snapshot,
)
from temps_shared.backups.s3_archive import (
    HEADERS,
    INDEX_ARTIFACT,
    INDEX_FORMAT,
    OBJECTS_ARTIFACT,
    OBJECTS_FORMAT,
    BucketIndex,
    Entry,
    S3ArchiveError,
    TarWriter,
    bucket_figures,
    check_body,
    index_chunks,
    index_document,
    index_figures,
    load_index,
    member_name,
    multipart_count,
    plain_etag,
    service_figures,
    tar_members,
)
from temps_shared.engines.s3_buckets import REGION, endpoint_url

PORT_NAME = "s3"
DELETE_BATCH = 1000
SPOOL_IN_MEMORY = 16 * 1024 * 1024  # a body (or part) larger than this is spooled to disk
S3Errors = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
# Answers meaning "the bucket has no such setting" (or the store does not implement it).
ABSENT = {
    "NoSuchTagSet", "NoSuchTagSetError", "NoSuchBucketPolicy", "NoSuchLifecycleConfiguration",
    "NoSuchCORSConfiguration", "NotImplemented", "501",
}  # fmt: skip
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _keep_listing_order(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
    """boto3 parses versions and delete markers into two lists, losing their order (newest
    first, per key); the response's XML has it: kept as `TempsOrder`. botocore parsed the same
    bytes with the same parser just before."""
    if http_response.status_code != 200:
        return
    root = ElementTree.fromstring(http_response.content)
    order = []
    for child in root:
        kind = child.tag.removeprefix(_S3_NS)
        if kind in ("Version", "DeleteMarker"):
            order.append(
                (kind, child.findtext(f"{_S3_NS}Key"), child.findtext(f"{_S3_NS}VersionId"))
            )
    parsed["TempsOrder"] = order


@contextlib.contextmanager
def _client(handle: ServiceHandle) -> Iterator[Any]:
    """An admin client of the service (path-style, SigV4, the installation CA), its own: the
    listing hook is registered on it, and a backup retries what readiness probes do not."""
    with tempfile.NamedTemporaryFile("w", suffix=".pem", prefix="temps-s3-ca-") as ca:
        ca.write(handle.ca_pem)
        ca.flush()
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url(*handle.endpoints[PORT_NAME]),
            aws_access_key_id=handle.credentials["access_key"],
            aws_secret_access_key=handle.credentials["secret_key"],
            region_name=REGION,
            verify=ca.name,
            config=botocore.config.Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=120,
            ),
        )
        client.meta.events.register("after-call.s3.ListObjectVersions", _keep_listing_order)
        with _translated(handle):
            yield client


@contextlib.contextmanager
def _translated(handle: ServiceHandle) -> Iterator[None]:
    """An S3 error as an `S3ArchiveError` naming the service."""
    try:
        yield
    except S3Errors as exc:
        raise S3ArchiveError(f"S3 service {handle.container}: {exc}") from exc


# --- listing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    key: str
    version_id: str
    latest: bool
    etag: str | None  # None: a delete marker
    size: int
    last_modified: str


def _list_versions(client: Any, bucket: str) -> list[Listed]:
    """Every version and delete marker of `bucket`, in restore order: keys ascending, each
    key's versions oldest first."""
    listed: list[Listed] = []
    markers: dict[str, str] = {}
    while True:
        page = client.list_object_versions(Bucket=bucket, MaxKeys=1000, **markers)
        found = {("Version", v["Key"], v["VersionId"]): v for v in page.get("Versions", [])}
        found |= {
            ("DeleteMarker", m["Key"], m["VersionId"]): m for m in page.get("DeleteMarkers", [])
        }
        for kind, key, version_id in page["TempsOrder"]:
            item = found[(kind, key, version_id)]
            listed.append(
                Listed(
                    key,
                    version_id,
                    bool(item.get("IsLatest")),
                    item["ETag"] if kind == "Version" else None,
                    int(item.get("Size", 0)),
                    item["LastModified"].isoformat() if "LastModified" in item else "",
                )
            )
        if not page.get("IsTruncated"):
            break
        markers = {"KeyMarker": page["NextKeyMarker"]}
        if page.get("NextVersionIdMarker"):
            markers["VersionIdMarker"] = page["NextVersionIdMarker"]
    # Newest first per key as listed → oldest first.
    ordered: list[Listed] = []
    start = 0
    for n in range(1, len(listed) + 1):
        if n == len(listed) or listed[n].key != listed[start].key:
            ordered.extend(reversed(listed[start:n]))
            start = n
    return ordered


def _buckets(client: Any) -> list[str]:
    return sorted(b["Name"] for b in client.list_buckets().get("Buckets", []))


def _setting(call: Any, pick: Any, **kwargs: Any) -> Any:
    try:
        return pick(call(**kwargs))
    except ClientError as exc:
        if _code(exc) in ABSENT:
            return None
        raise


def _bucket_settings(client: Any, bucket: str) -> dict[str, Any]:
    tags = _setting(client.get_bucket_tagging, lambda r: r.get("TagSet", []), Bucket=bucket)
    return {
        "versioning": client.get_bucket_versioning(Bucket=bucket).get("Status"),
        "tags": None if tags is None else {t["Key"]: t["Value"] for t in tags},
        "policy": _setting(client.get_bucket_policy, lambda r: r["Policy"], Bucket=bucket),
        "lifecycle": _setting(
            client.get_bucket_lifecycle_configuration, lambda r: r.get("Rules"), Bucket=bucket
        ),
        "cors": _setting(client.get_bucket_cors, lambda r: r.get("CORSRules"), Bucket=bucket),
    }


def _etag(client: Any, bucket: str, item: Listed) -> str | None:
    """The version's ETag as GET and HEAD answer it (what the backup records). In an
    unversioned bucket SeaweedFS 4.48 lists a multipart object's version with an ETag of its
    internal chunks (`…-24` for 12 parts of 8 MiB), unlike HEAD, GET and ListObjectsV2: a
    multipart ETag is asked for by HEAD."""
    if item.etag is None or not multipart_count(item.etag):
        return item.etag
    version = {"VersionId": item.version_id} if item.version_id != "null" else {}
    etag: str = client.head_object(Bucket=bucket, Key=item.key, **version)["ETag"]
    return etag


def _figures_of(client: Any) -> Figures:
    return service_figures(
        {
            bucket: bucket_figures(
                (v.key, _etag(client, bucket, v)) for v in _list_versions(client, bucket)
            )
            for bucket in _buckets(client)
        }
    )


# --- backup ----------------------------------------------------------------------------------


def _object_stream(
    client: Any, plans: list[tuple[BucketIndex, list[Listed]]], writer: TarWriter
) -> Iterator[bytes]:
    """The tar of every listed version; fills each bucket's index entries as it goes."""
    sequence = 0
    for bucket, listed in plans:
        versioned = bucket.settings["versioning"] is not None
        for item in listed:
            if item.etag is None:
                bucket.entries.append(
                    Entry(item.key, item.version_id, item.latest, True, item.last_modified)
                )
                continue
            by_version = {"VersionId": item.version_id} if versioned else {}
            try:
                response = client.get_object(Bucket=bucket.name, Key=item.key, **by_version)
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "NoSuchVersion", "404"):
                    continue  # deleted since the listing
                raise
            sequence += 1
            entry = _entry(client, bucket.name, item, response, member_name(bucket.name, sequence))
            body = response["Body"]
            try:
                modified = response.get("LastModified")
                mtime = modified.timestamp() if modified else 0.0
                yield from writer.member(entry.member, entry.size, mtime, body.iter_chunks(CHUNK))
            finally:
                body.close()
            bucket.entries.append(entry)
    yield writer.end()


def _entry(client: Any, bucket: str, item: Listed, response: dict[str, Any], member: str) -> Entry:
    """The index entry of one version as read (its ETag, headers, metadata, tags, parts)."""
    version = {"VersionId": item.version_id} if item.version_id != "null" else {}
    etag = plain_etag(response["ETag"])
    parts: list[int] = []
    # A multipart object keeps its ETag (MD5 of the parts' MD5s) only if restored in the same
    # parts: their sizes are recorded.
    for number in range(1, multipart_count(etag) + 1):
        head = client.head_object(Bucket=bucket, Key=item.key, PartNumber=number, **version)
        parts.append(int(head["ContentLength"]))
    size = int(response["ContentLength"])
    if parts and sum(parts) != size:
        parts = []  # the store does not answer per part: put back as one object
    tags: dict[str, str] = {}
    if response.get("TagCount"):
        tag_set = client.get_object_tagging(Bucket=bucket, Key=item.key, **version)["TagSet"]
        tags = {t["Key"]: t["Value"] for t in tag_set}
    return Entry(
        key=item.key,
        version_id=item.version_id,
        latest=item.latest,
        delete_marker=False,
        last_modified=item.last_modified,
        member=member,
        size=size,
        etag=etag,
        parts=parts,
        content_type=response.get("ContentType", ""),
        headers={h: str(response[h]) for h in HEADERS if response.get(h)},
        metadata=dict(response.get("Metadata", {})),
        tags=tags,
    )


# --- restore ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _decoded(
    open_artifact: OpenArtifact, artifact: dict[str, Any], identity: str
) -> Iterator[IO[bytes]]:
    """The artifact's plain bytes as a readable pipe, decrypted and decompressed by a thread as
    they are read (nothing of it kept on disk)."""
    read_fd, write_fd = os.pipe()
    reader, writer = os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")
    failure: list[BaseException] = []
    stopped = threading.Event()

    def pump() -> None:
        try:
            with open_artifact(artifact) as stored:
                decode(stored, identity, writer)
        except BaseException as exc:
            if not stopped.is_set():  # not just the reader closing early
                failure.append(exc)
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    thread = threading.Thread(target=pump, name=f"decode {artifact.get('name')}", daemon=True)
    thread.start()
    try:
        yield reader
    finally:
        stopped.set()
        reader.close()
        thread.join()
    if failure:
        raise S3ArchiveError(f"{artifact.get('name')} cannot be read: {failure[0]}") from failure[0]


def _spooled(body: IO[bytes], size: int) -> IO[bytes]:
    """`size` bytes of `body` in a seekable file (memory up to SPOOL_IN_MEMORY, then disk):
    botocore rewinds a body to sign and to retry it."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
    left = size
    while left:
        data = body.read(min(CHUNK, left))
        if not data:
            spool.close()
            raise S3ArchiveError(f"objects.tar ended inside an object ({left} bytes missing)")
        spool.write(data)
        left -= len(data)
    spool.seek(0)
    return spool


def _delete_everything(client: Any, bucket: str) -> None:
    """Remove every version and delete marker of `bucket` (a real delete, by version id)."""
    versioned = client.get_bucket_versioning(Bucket=bucket).get("Status") is not None
    listed = _list_versions(client, bucket)
    for start in range(0, len(listed), DELETE_BATCH):
        objects = [
            {"Key": v.key, "VersionId": v.version_id} if versioned else {"Key": v.key}
            for v in listed[start : start + DELETE_BATCH]
        ]
        answer = client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        if answer.get("Errors"):
            first = answer["Errors"][0]
            raise S3ArchiveError(
                f"cannot delete {first.get('Key')!r} from bucket {bucket}: {first.get('Message')}"
            )


def _put_object(client: Any, bucket: str, entry: Entry, body: IO[bytes]) -> None:
    attributes: dict[str, Any] = {"Metadata": entry.metadata, **entry.headers}
    if entry.content_type:
        attributes["ContentType"] = entry.content_type
    if entry.parts:
        upload = client.create_multipart_upload(Bucket=bucket, Key=entry.key, **attributes)
        upload_id = upload["UploadId"]
        try:
            done = []
            for number, size in enumerate(entry.parts, start=1):
                with _spooled(body, size) as part:
                    answer = client.upload_part(
                        Bucket=bucket, Key=entry.key, UploadId=upload_id, PartNumber=number,
                        Body=part,
                    )  # fmt: skip
                done.append({"PartNumber": number, "ETag": answer["ETag"]})
            answer = client.complete_multipart_upload(
                Bucket=bucket, Key=entry.key, UploadId=upload_id,
                MultipartUpload={"Parts": done},
            )  # fmt: skip
        except BaseException:
            with contextlib.suppress(*S3Errors):
                client.abort_multipart_upload(Bucket=bucket, Key=entry.key, UploadId=upload_id)
            raise
    else:
        with _spooled(body, entry.size) as whole:
            answer = client.put_object(Bucket=bucket, Key=entry.key, Body=whole, **attributes)
    if entry.tags:
        version = {"VersionId": answer["VersionId"]} if answer.get("VersionId") else {}
        client.put_object_tagging(
            Bucket=bucket,
            Key=entry.key,
            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in entry.tags.items()]},
            **version,
        )


def _apply_settings(client: Any, bucket: str, settings: dict[str, Any]) -> None:
    """Tags, policy, CORS and lifecycle as in the backup (removed where it had none)."""

    def absent_ok(call: Any, **kwargs: Any) -> None:
        try:
            call(Bucket=bucket, **kwargs)
        except ClientError as exc:
            if _code(exc) not in ABSENT:
                raise

    if settings["tags"] is None:
        absent_ok(client.delete_bucket_tagging)
    else:
        tag_set = [{"Key": k, "Value": v} for k, v in settings["tags"].items()]
        client.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tag_set})
    if settings["policy"] is None:
        absent_ok(client.delete_bucket_policy)
    else:
        client.put_bucket_policy(Bucket=bucket, Policy=settings["policy"])
    if settings["cors"] is None:
        absent_ok(client.delete_bucket_cors)
    else:
        client.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": settings["cors"]})
    if settings["lifecycle"] is None:
        absent_ok(client.delete_bucket_lifecycle)
    else:
        client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": settings["lifecycle"]}
        )


def _set_versioning(client: Any, bucket: str, status: str) -> None:
    if client.get_bucket_versioning(Bucket=bucket).get("Status") != status:
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})


def _prepare(client: Any, bucket: BucketIndex, existing: set[str]) -> None:
    """The bucket exists, empty, versioned while versions are put back if it was versioned."""
    if bucket.name not in existing:
        client.create_bucket(Bucket=bucket.name)
    if bucket.settings["versioning"] is not None:
        _set_versioning(client, bucket.name, "Enabled")
    elif client.get_bucket_versioning(Bucket=bucket.name).get("Status") == "Enabled":
        # Versioned since the backup: never unversioned again; suspended, a PUT replaces.
        _set_versioning(client, bucket.name, "Suspended")
    _delete_everything(client, bucket.name)


def _artifact(artifacts: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [a for a in artifacts if a.get("format") == kind]
    if len(found) != 1:
        raise S3ArchiveError(f"the backup has {len(found)} artifacts of format {kind}, not 1")
    return found[0]


def _entries(buckets: list[BucketIndex]) -> Iterator[Entry]:
    for bucket in buckets:
        yield from bucket.entries


class S3Backup:
    @contextlib.contextmanager
    def snapshot(self, handle: ServiceHandle) -> Iterator[Snapshot]:
        with _client(handle) as client:
            taken_at = datetime.now(UTC).isoformat()
            # The listing and the settings first: what the backup holds is decided here.
            plans = [
                (BucketIndex(name, _bucket_settings(client, name)), _list_versions(client, name))
                for name in _buckets(client)
            ]
            buckets = [bucket for bucket, _ in plans]

            def objects() -> Iterator[bytes]:
                for bucket in buckets:
                    bucket.entries.clear()  # a retried upload starts again
                with _translated(handle):
                    yield from _object_stream(client, plans, TarWriter())

            yield Snapshot(
                [
                    ArtifactSource(OBJECTS_ARTIFACT, objects, {"format": OBJECTS_FORMAT}),
                    ArtifactSource(
                        INDEX_ARTIFACT,
                        lambda: index_chunks(index_document(buckets, taken_at)),
                        {"format": INDEX_FORMAT},
                    ),
                ],
                figures=lambda: index_figures(buckets),
            )

    def figures(self, handle: ServiceHandle) -> Figures:
        with _client(handle) as client:
            return _figures_of(client)

    def restore(
        self, handle: ServiceHandle, artifacts: list[dict[str, Any]], open_artifact: OpenArtifact
    ) -> None:
        index_artifact = _artifact(artifacts, INDEX_FORMAT)
        objects_artifact = _artifact(artifacts, OBJECTS_FORMAT)
        with (
            tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as plain,
            _decoded(open_artifact, index_artifact, handle.identity) as stream,
        ):
            while data := stream.read(CHUNK):
                plain.write(data)
            plain.seek(0)
            buckets = load_index(plain)
        # The whole tar is checked against the index (names, sizes, MD5 ETags) before anything
        # of the service changes.
        with _decoded(open_artifact, objects_artifact, handle.identity) as stream:
            for entry, body in tar_members(stream, _entries(buckets)):
                if body is not None:
                    check_body(entry, body)
        with _client(handle) as client:
            wanted = {b.name for b in buckets}
            existing = set(_buckets(client))
            # A bucket the backup lacks is emptied but kept: buckets are also the platform's
            # (a new service's own, a link's), which its users expect to find.
            for name in sorted(existing - wanted):
                _delete_everything(client, name)
            for bucket in buckets:
                _prepare(client, bucket, existing)
            owner = {id(e): b.name for b in buckets for e in b.entries}
            with _decoded(open_artifact, objects_artifact, handle.identity) as stream:
                for entry, body in tar_members(stream, _entries(buckets)):
                    try:
                        if body is None:
                            client.delete_object(Bucket=owner[id(entry)], Key=entry.key)
                        else:
                            _put_object(client, owner[id(entry)], entry, body)
                    except S3Errors as exc:
                        raise S3ArchiveError(
                            f"restoring {entry.key!r} into bucket {owner[id(entry)]}: {exc}"
                        ) from exc
            for bucket in buckets:
                if bucket.settings["versioning"] == "Suspended":
                    _set_versioning(client, bucket.name, "Suspended")
                _apply_settings(client, bucket.name, bucket.settings)
