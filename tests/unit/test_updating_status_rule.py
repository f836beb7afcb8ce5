"""The one rule of what an operation's request shows at once (`requested_status`)."""

from __future__ import annotations

import pytest
from temps_api.projector import requested_status
from temps_shared.messages import ServiceStatus


@pytest.mark.parametrize("current", ["operational", "degraded", "down"])
def test_a_parameters_change_to_a_running_service_shows_updating(current: str) -> None:
    shown = requested_status("update", current)
    assert shown is not None
    assert shown[0] == ServiceStatus.UPDATING
    assert shown[1]


@pytest.mark.parametrize("current", ["provisioning", "stopped", "failed", "updating", None])
def test_a_change_to_a_service_not_running_keeps_its_status(current: str | None) -> None:
    assert requested_status("update", current) is None


@pytest.mark.parametrize("current", ["operational", "stopped"])
def test_resource_caps_keep_the_status_the_agent_announces_a_recreate(current: str) -> None:
    assert requested_status("resources", current) is None


def test_start_retry_and_delete_keep_their_statuses() -> None:
    assert requested_status("start", "stopped") == (ServiceStatus.PROVISIONING, None)
    assert requested_status("retry", "failed") == (ServiceStatus.PROVISIONING, None)
    assert requested_status("delete", "operational") == (ServiceStatus.DELETING, None)
    assert requested_status("stop", "operational") is None
