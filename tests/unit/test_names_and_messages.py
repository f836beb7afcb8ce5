from __future__ import annotations

from uuid import uuid4

import pytest
from pydantic import ValidationError
from temps_shared.bus.codec import encode
from temps_shared.bus.envelope import open_envelope
from temps_shared.ids import container_name, is_valid_service_name, volume_name
from temps_shared.messages import EVENT_TYPES, ReconcileService, Role, ServiceProvisioned


@pytest.mark.parametrize("name", ["db", "app-db-1", "a" + "b" * 37])
def test_valid_names(name: str) -> None:
    assert is_valid_service_name(name)


@pytest.mark.parametrize("name", ["d", "1db", "Db", "db_1", "a" + "b" * 38, "db.x", "", "ab\n"])
def test_invalid_names(name: str) -> None:
    assert not is_valid_service_name(name)


def test_derived_names_fit_in_dns_labels() -> None:
    longest = "a" + "b" * 37
    assert len(container_name("postgres", longest, replica=5)) <= 63
    assert volume_name("postgres", "db1") == "temps-postgres-db1-data"


def test_subjects_end_with_the_publishing_role() -> None:
    sid = uuid4()
    command = ReconcileService(service_id=sid, generation=1, reason="create")
    assert command.subject(Role.API) == "temps.cmd.provisioner.reconcile.api"
    event = ServiceProvisioned(service_id=sid, generation=1, connection_info={})
    assert event.subject(Role.PROVISIONER) == (
        f"temps.evt.service.{sid}.ServiceProvisioned.provisioner"
    )


def test_messages_round_trip_and_are_frozen() -> None:
    command = ReconcileService(service_id=uuid4(), generation=3, reason="create")
    opened = open_envelope(command.subject(Role.API), "ReconcileService", encode(command))
    assert opened == (command, Role.API)
    with pytest.raises(ValidationError):
        command.generation = 4  # type: ignore[misc]
    event = ServiceProvisioned(service_id=uuid4(), generation=1, connection_info={"port": 5432})
    origin = Role.PROVISIONER
    assert open_envelope(event.subject(origin), "ServiceProvisioned", encode(event))[0] == event
    assert event.schema_version == 1


def test_events_carry_no_secret_fields() -> None:
    for cls in EVENT_TYPES.values():
        for field in cls.model_fields:
            assert not any(word in field for word in ("password", "secret", "token", "key"))
