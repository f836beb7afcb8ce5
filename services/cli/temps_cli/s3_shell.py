"""The S3 shell of `temps connect`: a few commands on an S3 service as its administrator, over
HTTPS verified against the installation CA (no `aws` CLI needed)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

HELP = """commands:
  ls                      the buckets
  ls BUCKET[/PREFIX]      objects (key, size)
  cat BUCKET/KEY          an object's content
  put FILE BUCKET/KEY     upload a file
  rm BUCKET/KEY           delete an object
  mb BUCKET               make a bucket
  help, exit"""


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("/")
    return bucket, key


def run_command(s3: Any, line: str, out: Any = sys.stdout) -> None:
    """One shell command; raises ValueError for a command it does not know."""
    match shlex.split(line):
        case ["ls"]:
            for bucket in s3.list_buckets().get("Buckets", []):
                out.write(f"{bucket['Name']}\n")
        case ["ls", path]:
            bucket, prefix = _split(path)
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    out.write(f"{item['Key']}\t{item['Size']}\n")
        case ["cat", path]:
            bucket, key = _split(path)
            out.write(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode(errors="replace"))
        case ["put", file, path]:
            bucket, key = _split(path)
            s3.put_object(Bucket=bucket, Key=key, Body=Path(file).read_bytes())
        case ["rm", path]:
            bucket, key = _split(path)
            s3.delete_object(Bucket=bucket, Key=key)
        case ["mb", bucket]:
            s3.create_bucket(Bucket=bucket)
        case ["help"]:
            out.write(HELP + "\n")
        case _:
            raise ValueError(f"unknown command {line!r} (try help)")


def run_s3_shell(creds: dict[str, Any], ca_file: str, command: str | None) -> int:
    """`command` alone (its exit code), or a prompt until `exit` / end of input."""
    s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=creds["local_endpoint"],
        aws_access_key_id=creds["access_key"],
        aws_secret_access_key=creds["secret_key"],
        region_name=creds.get("region"),
        verify=ca_file,
        config=botocore.config.Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    lines = [command] if command is not None else None
    failed = False
    interactive = lines is None and sys.stdin.isatty()
    if interactive:
        sys.stdout.write(f"S3 at {creds['local_endpoint']} (default bucket {creds['bucket']})\n")
    while True:
        if lines is not None:
            if not lines:
                return 1 if failed else 0
            line = lines.pop()
        else:
            try:
                line = input("s3> ") if interactive else sys.stdin.readline()
            except EOFError:
                return 0
            if not interactive and not line:
                return 1 if failed else 0
        if line.strip() in ("exit", "quit"):
            return 0
        if not line.strip():
            continue
        try:
            run_command(s3, line)
            failed = False
        except (ValueError, OSError, botocore.exceptions.BotoCoreError) as exc:
            sys.stderr.write(f"error: {exc}\n")
            failed = True
        except botocore.exceptions.ClientError as exc:
            sys.stderr.write(f"error: {exc.response.get('Error', {}).get('Message', exc)}\n")
            failed = True
