"""The bus as a trust boundary, in pure logic: a consumer's envelope check, and the server
permissions derived from the contract."""

from __future__ import annotations

from uuid import uuid4

import pytest
from temps_shared.bus.codec import encode
from temps_shared.bus.envelope import MESSAGE_TYPES, ForgedMessage, open_envelope
from temps_shared.bus.permissions import inbox_prefix, publish_allowed, subscribe_allowed
from temps_shared.messages import (
    MONITOR_SOURCE,
    Command,
    Event,
    HealthChecked,
    ProbeNow,
    ReconcileService,
    Role,
    ServiceProvisioned,
    ServiceStatus,
    ServiceStatusChanged,
)

SID = uuid4()
PROVISIONED = ServiceProvisioned(service_id=SID, generation=1, connection_info={"port": 1})


def test_a_message_from_its_own_role_opens() -> None:
    message, origin = open_envelope(
        PROVISIONED.subject(Role.PROVISIONER), "ServiceProvisioned", encode(PROVISIONED)
    )
    assert (message, origin) == (PROVISIONED, Role.PROVISIONER)


@pytest.mark.parametrize(
    ("subject", "type_header", "why"),
    [
        # the original attack: connection_info rewritten by someone who is not the provisioner
        (PROVISIONED.subject(Role.MONITOR), "ServiceProvisioned", "monitor may not publish"),
        (PROVISIONED.subject(Role.API), "ServiceProvisioned", "api may not publish"),
        # a type smuggled onto a subject the sender may use
        (
            f"temps.evt.service.{SID}.ServiceStatusChanged.provisioner",
            "ServiceProvisioned",
            "expected",
        ),
        # another service's subject
        (
            f"temps.evt.service.{uuid4()}.ServiceProvisioned.provisioner",
            "ServiceProvisioned",
            "on ",
        ),
        (f"temps.evt.service.{SID}.ServiceProvisioned", "ServiceProvisioned", "no publisher"),
        (f"temps.evt.service.{SID}.ServiceProvisioned.root", "ServiceProvisioned", "no publisher"),
        (PROVISIONED.subject(Role.PROVISIONER), "Nope", "unknown message type"),
        (PROVISIONED.subject(Role.PROVISIONER), "", "unknown message type"),
    ],
)
def test_a_forged_message_is_refused(subject: str, type_header: str, why: str) -> None:
    with pytest.raises(ForgedMessage, match=why):
        open_envelope(subject, type_header, encode(PROVISIONED))


def test_a_body_that_does_not_decode_is_refused() -> None:
    with pytest.raises(ForgedMessage, match="does not decode"):
        open_envelope(PROVISIONED.subject(Role.PROVISIONER), "ServiceProvisioned", b"{}")


def test_only_the_monitor_speaks_as_the_monitor() -> None:
    verdict = ServiceStatusChanged(
        service_id=SID, status=ServiceStatus.DOWN, source=MONITOR_SOURCE, generation=1
    )
    assert open_envelope(verdict.subject(Role.MONITOR), "ServiceStatusChanged", encode(verdict))
    with pytest.raises(ForgedMessage, match="source 'monitor'"):
        open_envelope(verdict.subject(Role.PROVISIONER), "ServiceStatusChanged", encode(verdict))
    own = ServiceStatusChanged(service_id=SID, status=ServiceStatus.STOPPED, generation=1)
    assert open_envelope(own.subject(Role.PROVISIONER), "ServiceStatusChanged", encode(own))
    with pytest.raises(ForgedMessage, match="source None"):
        open_envelope(own.subject(Role.MONITOR), "ServiceStatusChanged", encode(own))


def _leaves(base: type) -> set[type]:
    subclasses = base.__subclasses__()
    return set().union(*(_leaves(c) for c in subclasses)) if subclasses else {base}


def test_every_message_class_is_in_the_contract() -> None:
    """A command or event missing from COMMAND_TYPES/EVENT_TYPES gets no bus permission and
    cannot be decoded: every concrete class must be listed."""
    assert (_leaves(Command) | _leaves(Event)) - set(MESSAGE_TYPES.values()) == set()


def test_every_message_type_has_publishers() -> None:
    assert all(cls.publishers for cls in MESSAGE_TYPES.values())


def test_each_role_publishes_only_its_own_messages() -> None:
    monitor = publish_allowed(Role.MONITOR)
    assert HealthChecked.subject_pattern(Role.MONITOR) in monitor
    assert ServiceProvisioned.subject_pattern(Role.MONITOR) not in monitor
    assert not [s for s in monitor if s.startswith("temps.") and not s.endswith(".monitor")]
    provisioner = publish_allowed(Role.PROVISIONER)
    assert ProbeNow.subject_pattern(Role.PROVISIONER) in provisioner
    assert ReconcileService.subject_pattern(Role.PROVISIONER) not in provisioner
    assert publish_allowed(Role.AGENT) == []


def test_no_role_may_delete_or_purge_and_only_the_gateway_calls_the_agent() -> None:
    for role in Role:
        allowed = publish_allowed(role)
        assert not [s for s in allowed if "DELETE" in s or "PURGE" in s], role
        assert ("temps.rpc.*.*" in allowed) == (role is Role.API)
        assert subscribe_allowed(role)[0] == f"{inbox_prefix(role)}.>"
    assert "temps.rpc.*.*" in subscribe_allowed(Role.AGENT)


@pytest.mark.parametrize("status", [ServiceStatus.FAILED, ServiceStatus.STOPPED, "deleting"])
def test_the_monitor_moves_a_service_only_among_its_own_statuses(status: str) -> None:
    verdict = ServiceStatusChanged(
        service_id=SID, status=ServiceStatus(status), source=MONITOR_SOURCE, generation=1
    )
    with pytest.raises(ForgedMessage, match="may not set a service"):
        open_envelope(verdict.subject(Role.MONITOR), "ServiceStatusChanged", encode(verdict))


def test_numbers_on_the_bus_are_finite() -> None:
    body = (
        b'{"service_id": "%s", "checked_at": "2026-12-03T00:00:00Z", "status": "down",'
        % (str(SID).encode())
        + b' "generation": 1, "monitor": "m", "response_time_ms": NaN}'
    )
    with pytest.raises(ForgedMessage, match="does not decode"):
        open_envelope(HealthChecked.subject_pattern(Role.MONITOR, str(SID)), "HealthChecked", body)
