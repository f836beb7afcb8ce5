"""`PATCH …/backups` takes JSON's own types only: `true` is not one day, "7" not seven."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from temps_api.routes.backup_schedule import ScheduleUpdate


@pytest.mark.parametrize(
    "body",
    [{"retention_days": True}, {"retention_days": "7"}, {"retention_days": 7.0},
     {"enabled": 1}, {"enabled": "true"}],
)  # fmt: skip
def test_lax_values_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ScheduleUpdate.model_validate(body)


def test_proper_values_are_taken() -> None:
    body = {"retention_days": 90, "enabled": False, "verify": "daily", "schedule": "30 2 * * *"}
    update = ScheduleUpdate.model_validate(body)
    assert (update.retention_days, update.enabled, update.verify) == (90, False, "daily")
