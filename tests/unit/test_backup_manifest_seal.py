"""The manifest's seal and its encrypted figures: anyone who can write the bucket can encrypt an
artifact to the installation's (public) age recipient and put its SHA-256 in the manifest, so the
manifest itself must prove it was written by the master key's holder."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from temps_shared.backups import layout
from temps_shared.crypto import KeyRing
from temps_shared.store.services import ServiceRecord, secrets_aad

KEYRING = KeyRing(os.urandom(32))
TABLES = {"public.payroll": {"rows": 12, "sum": "checksum-of-payroll"}}
FIGURES = {"databases": {"app": {"tables": TABLES}}}


def _service(keyring: KeyRing = KEYRING) -> ServiceRecord:
    service_id, now = uuid4(), datetime.now(UTC)
    return ServiceRecord(
        id=service_id,
        name="db",
        service_type="postgres",
        version="16",
        parameters={},
        resources={},
        secrets_ciphertext=keyring.encrypt(
            json.dumps({"username": "u", "password": "p"}).encode(), secrets_aad(service_id)
        ),
        desired_state="running",
        generation=1,
        purged=False,
        created_at=now,
        updated_at=now,
    )


def _manifest(backup_id: UUID, keyring: KeyRing = KEYRING) -> dict[str, Any]:
    now = datetime.now(UTC)
    return layout.manifest(
        backup_id=backup_id,
        service=_service(keyring),
        keyring=keyring,
        kind="logical",
        started_at=now,
        finished_at=now,
        recipient="age1example",
        artifacts=[{"name": "app.dump.zst.age", "size": 10, "sha256": "0" * 64}],
        figures=FIGURES,
    )


def _stored(document: dict[str, Any]) -> dict[str, Any]:
    """As read back from the bucket (JSON round trip)."""
    loaded: dict[str, Any] = json.loads(json.dumps(document))
    return loaded


def test_a_sealed_manifest_checks_after_a_json_round_trip() -> None:
    backup_id = uuid4()
    document = _stored(_manifest(backup_id))
    assert isinstance(document[layout.SEAL], str)
    layout.check_seal(document, KEYRING, backup_id)
    # Key order in the stored JSON does not matter (canonical form).
    reordered = dict(reversed(list(document.items())))
    layout.check_seal(reordered, KEYRING, backup_id)


@pytest.mark.parametrize(
    "forge",
    [
        lambda d: d["artifacts"][0].update(sha256="1" * 64),  # a forged artifact's digest
        lambda d: d["artifacts"][0].update(size=11),
        lambda d: d["artifacts"][0].update(name="other.dump.zst.age"),
        lambda d: d["artifacts"].append({"name": "globals.sql.zst.age", "size": 1, "sha256": ""}),
        lambda d: d["service"].update(version="17"),
        lambda d: d["service"]["parameters"].update(replicas=3),
        lambda d: d.update(figures_encrypted=KEYRING.encrypt(b"{}", b"other")),
        lambda d: d.update(engine="redis"),
        lambda d: d.update(extra=True),
        lambda d: d.update(seal=KEYRING.encrypt(b"", b"backup-manifest-seal:x")),
    ],
)
def test_any_change_breaks_the_seal(forge: Any) -> None:
    backup_id = uuid4()
    document = _stored(_manifest(backup_id))
    forge(document)
    with pytest.raises(layout.ManifestNotSealed, match="not sealed by this installation's key"):
        layout.check_seal(document, KEYRING, backup_id)


def test_another_installation_or_another_backup_is_refused() -> None:
    backup_id = uuid4()
    elsewhere = _stored(_manifest(backup_id, KeyRing(os.urandom(32))))
    with pytest.raises(layout.ManifestNotSealed, match=str(backup_id)):
        layout.check_seal(elsewhere, KEYRING, backup_id)
    # A validly sealed manifest copied into another backup's folder.
    with pytest.raises(layout.ManifestNotSealed):
        layout.check_seal(_stored(_manifest(backup_id)), KEYRING, uuid4())


def test_an_unsealed_manifest_is_refused_by_name() -> None:
    backup_id = uuid4()
    document = _stored(_manifest(backup_id))
    del document[layout.SEAL]
    with pytest.raises(layout.ManifestNotSealed, match="has no seal"):
        layout.check_seal(document, KEYRING, backup_id)


def test_figures_are_encrypted_and_bound_to_the_backup() -> None:
    backup_id = uuid4()
    document = _stored(_manifest(backup_id))
    text = json.dumps(document)
    assert "figures" not in document
    assert "payroll" not in text
    assert layout.open_figures(document, KEYRING) == FIGURES
    # Another backup's figures pasted in do not open as this one's.
    other = _stored(_manifest(uuid4()))
    document["figures_encrypted"] = other["figures_encrypted"]
    with pytest.raises(Exception, match="authentication"):
        layout.open_figures(document, KEYRING)
