"""The backup worker's place in the bus contract, its age identity, and its artifact codec."""

from __future__ import annotations

import io
import os
from pathlib import Path
from uuid import uuid4

import pyrage
import pytest
from temps_backup.settings import BackupSettings
from temps_shared.backups.codec import decode, encode
from temps_shared.backups.identity import backup_identity
from temps_shared.bus.permissions import publish_allowed
from temps_shared.bus.topology import BACKUP_CONSUMER
from temps_shared.messages import (
    BackupCompleted,
    BackupProgress,
    RestoreBackup,
    Role,
    RunBackup,
    ServiceFailed,
    VerifyBackup,
)


def test_the_backup_role_publishes_only_backup_events_and_binds_its_consumer() -> None:
    allowed = publish_allowed(Role.BACKUP)
    assert BackupCompleted.subject_pattern(Role.BACKUP) in allowed
    assert BackupProgress.subject_pattern(Role.BACKUP) in allowed
    assert ServiceFailed.subject_pattern(Role.BACKUP) not in allowed
    # Its scheduler asks for backups and verifications; only the gateway asks for restores.
    assert RunBackup.subject_pattern(Role.BACKUP) in allowed
    assert VerifyBackup.subject_pattern(Role.BACKUP) in allowed
    assert RestoreBackup.subject_pattern(Role.BACKUP) not in allowed
    assert not [s for s in allowed if s.startswith("temps.") and not s.endswith(".backup")]
    durable = f"$JS.API.CONSUMER.MSG.NEXT.{BACKUP_CONSUMER.stream}.{BACKUP_CONSUMER.durable}"
    assert durable in allowed
    assert durable not in publish_allowed(Role.PROVISIONER)
    assert RunBackup.subject_pattern(Role.API) in publish_allowed(Role.API)
    assert RestoreBackup.subject_pattern(Role.API) in publish_allowed(Role.API)
    assert RunBackup.subject_pattern(Role.API).startswith("temps.cmd.backup.")


def test_the_identity_is_derived_from_the_master_key_alone() -> None:
    key = os.urandom(32)
    identity = backup_identity(key)
    assert identity == backup_identity(key)
    assert identity != backup_identity(os.urandom(32))
    assert identity.startswith("AGE-SECRET-KEY-1")
    pyrage.x25519.Identity.from_str(identity)  # a valid age identity (bech32 checksum)


def test_artifacts_round_trip_and_refuse_another_key() -> None:
    identity = backup_identity(os.urandom(32))
    recipient = str(pyrage.x25519.Identity.from_str(identity).to_public())
    data = [os.urandom(1000) + b"a" * 100_000 for _ in range(5)]
    stored = io.BytesIO()
    encoded = encode(iter(data), recipient, stored)
    assert encoded.size == len(stored.getvalue())
    assert encoded.size < sum(map(len, data))  # compressed before it was encrypted
    stored.seek(0)
    plain = io.BytesIO()
    decode(stored, identity, plain)
    assert plain.getvalue() == b"".join(data)
    stored.seek(0)
    with pytest.raises(pyrage.DecryptError):
        decode(stored, backup_identity(str(uuid4()).encode()), io.BytesIO())


def test_the_store_key_comes_from_its_file_when_one_is_given(tmp_path: Path) -> None:
    key_file = tmp_path / "backup_store_secret_key"
    key_file.write_text("from-the-file\n")
    settings = BackupSettings(
        backup_store_secret_key="from-env", backup_store_secret_key_file=key_file
    )
    assert settings.store_secret_key() == "from-the-file"
    assert BackupSettings(backup_store_secret_key="from-env").store_secret_key() == "from-env"
