"""The S3 bucket backups go into: artifacts streamed up through a pipe (multipart, bounded
parts), read back to a local spool file, manifests as JSON. Blocking (boto3): call from a
worker thread."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, BinaryIO, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from temps_shared.backups.destination import Destination

T = TypeVar("T")
PART_BYTES = 8 * 1024 * 1024
# The upload's memory is about (chunks read ahead + parts in flight) parts: boto3 reads up to
# 10 parts ahead of a non-seekable stream by default, and its constructor does not take the
# bound, hence the attribute.
TRANSFER = TransferConfig(
    multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES, max_concurrency=2
)
TRANSFER.max_in_memory_upload_chunks = 4


def _ca_file(ca_pem: str | None) -> Any:
    """botocore trusts a CA from a file: the PEM written to a temporary one, kept while the
    client lives."""
    if ca_pem is None:
        return None
    file = tempfile.NamedTemporaryFile("w", suffix=".pem", prefix="temps-backup-ca-")  # noqa: SIM115
    file.write(ca_pem)
    file.flush()
    return file


class StoreError(Exception):
    """The store refused or failed an operation; the message says which and why."""


class BackupStore:
    """One destination's bucket."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self.bucket = destination.bucket
        self._ca_file = _ca_file(destination.ca_pem)
        self._s3: Any = boto3.client(
            "s3",
            endpoint_url=destination.endpoint,
            region_name=destination.region,
            aws_access_key_id=destination.access_key_id,
            aws_secret_access_key=destination.secret_access_key,
            verify=self._ca_file.name if self._ca_file is not None else None,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path" if destination.path_style else "virtual"},
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )

    def ensure_bucket(self) -> None:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._s3.create_bucket(Bucket=self.bucket)

    def upload(self, key: str, produce: Callable[[BinaryIO], T]) -> T:
        """Stream what `produce(sink)` writes into `key`; returns what `produce` returns."""
        read_fd, write_fd = os.pipe()
        reader, writer = os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")
        failure: list[BaseException] = []

        def send() -> None:
            try:
                self._s3.upload_fileobj(reader, self.bucket, key, Config=TRANSFER)
            except BaseException as exc:
                failure.append(exc)
            finally:
                reader.close()

        sender = threading.Thread(target=send, name=f"upload {key}", daemon=True)
        sender.start()
        try:
            result = produce(writer)
        except BrokenPipeError:
            result = None  # the upload stopped reading: its error says why
        finally:
            with contextlib.suppress(BrokenPipeError):
                writer.close()
            sender.join()
        if failure:
            raise StoreError(f"upload of {key} failed: {failure[0]}") from failure[0]
        assert result is not None
        return result

    def put_json(self, key: str, document: dict[str, Any]) -> None:
        body = json.dumps(document, indent=2, sort_keys=True).encode()
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")

    def get_json(self, key: str) -> dict[str, Any]:
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            raise StoreError(f"cannot read {key} from bucket {self.bucket}: {exc}") from exc
        document: dict[str, Any] = json.loads(body)
        return document

    def download(self, key: str, sink: BinaryIO) -> None:
        try:
            self._s3.download_fileobj(self.bucket, key, sink, Config=TRANSFER)
        except ClientError as exc:
            raise StoreError(f"cannot read {key} from bucket {self.bucket}: {exc}") from exc

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (paginated listing)."""
        found: list[str] = []
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                found.extend(str(item["Key"]) for item in page.get("Contents", []))
        except ClientError as exc:
            raise StoreError(f"cannot list {prefix} in bucket {self.bucket}: {exc}") from exc
        return found

    def read_text(self, key: str) -> str | None:
        """A small object's text; None when there is no such object."""
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise StoreError(f"cannot read {key} from bucket {self.bucket}: {exc}") from exc
        except BotoCoreError as exc:  # unreachable, timed out
            raise StoreError(f"cannot read {key} from bucket {self.bucket}: {exc}") from exc
        with body:
            return str(body.read().decode())

    def last_object(self, prefix: str) -> tuple[str, datetime] | None:
        """The greatest key under `prefix` and when it was written, walking down the greatest
        "folder" at each level (a few listings, however many objects the prefix holds)."""
        try:
            while True:
                page = self._s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
                folders = [str(p["Prefix"]) for p in page.get("CommonPrefixes", [])]
                if folders and not page.get("IsTruncated"):
                    prefix = max(folders)
                    continue
                newest: tuple[str, datetime] | None = None
                for listed in self._s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix
                ):
                    for item in listed.get("Contents", []):
                        if newest is None or str(item["Key"]) > newest[0]:
                            newest = (str(item["Key"]), item["LastModified"])
                return newest
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"cannot list {prefix} in bucket {self.bucket}: {exc}") from exc

    def open_object(self, key: str) -> BinaryIO:
        """`key`'s bytes as a stream read from the store as it is consumed (close it)."""
        try:
            body: BinaryIO = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            raise StoreError(f"cannot read {key} from bucket {self.bucket}: {exc}") from exc
        return body

    def delete_folder(self, folder: str) -> int:
        """Delete every object (every version, where the bucket keeps versions) under `folder`
        and abort the unfinished multipart uploads there; returns the objects deleted."""
        if not folder.endswith("/") or folder.count("/") < 2:
            raise StoreError(f"refusing to delete {folder!r}: not a backup's folder")
        try:
            deleted = self._delete_versions(folder)
            for page in self._s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=folder
            ):
                for upload in page.get("Uploads", []):
                    self._s3.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
        except ClientError as exc:
            raise StoreError(f"cannot delete {folder} in bucket {self.bucket}: {exc}") from exc
        return deleted

    def _delete_versions(self, folder: str) -> int:
        deleted, previous = 0, None
        while True:  # listed again after each batch: what a page named may be gone
            listed = self._s3.list_objects_v2(Bucket=self.bucket, Prefix=folder, MaxKeys=1000)
            batch = [{"Key": item["Key"]} for item in listed.get("Contents", [])]
            batch += self._old_versions(folder)
            if not batch:
                return deleted
            if batch == previous:
                raise StoreError(f"objects under {folder} stay after their deletion")
            previous = batch
            answer = self._s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            if errors := answer.get("Errors"):
                first = errors[0]
                raise StoreError(
                    f"cannot delete {first.get('Key')} in bucket {self.bucket}: "
                    f"{first.get('Code')} {first.get('Message')}"
                )
            deleted += len(batch)

    def _old_versions(self, folder: str) -> list[dict[str, str]]:
        """Versions and delete markers under `folder` in a versioned bucket (none elsewhere)."""
        try:
            listed = self._s3.list_object_versions(Bucket=self.bucket, Prefix=folder, MaxKeys=1000)
        except ClientError:
            return []  # a store without versioning support
        return [
            {"Key": item["Key"], "VersionId": item["VersionId"]}
            for kind in ("Versions", "DeleteMarkers")
            for item in listed.get(kind, [])
            if item.get("VersionId") not in (None, "null")
        ]
