"""The comparison of a backup's figures with a test restore's, the pieces of the engines'
figures that need no server, and the status rule of a failed verification."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from temps_api.health_projection import VERIFICATION_REASON, with_verification
from temps_shared.backups.figures import MAX_NAMED, differences, reason, summary
from temps_shared.backups.postgres import missing_role_statements, with_summary

BACKUP = {
    "databases": {
        "app": {
            "tables": {
                "public.orders": {"rows": 3, "checksum": "123"},
                "public.users": {"rows": 2, "checksum": "456"},
            },
            "sequences": {"public.orders_id_seq": {"at_least": 3}},
        }
    },
    "_summary": "1 databases, 2 tables, 5 rows, 1 sequences",
}


def _copy(value: object) -> object:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def test_equal_figures_have_no_difference() -> None:
    assert differences(BACKUP, _copy(BACKUP)) == []  # type: ignore[arg-type]


def test_a_changed_table_is_named_with_both_values() -> None:
    restored = _copy(BACKUP)
    restored["databases"]["app"]["tables"]["public.users"]["checksum"] = "999"  # type: ignore[index]
    assert differences(BACKUP, restored) == [  # type: ignore[arg-type]
        "databases/app/tables/public.users/checksum: 456 in the backup, 999 restored"
    ]


def test_missing_and_extra_entries_are_named() -> None:
    restored = _copy(BACKUP)
    tables = restored["databases"]["app"]["tables"]  # type: ignore[index]
    del tables["public.orders"]
    tables["public.extra"] = {"rows": 0, "checksum": "0"}
    restored["databases"]["app"]["sequences"]["public.orders_id_seq"] = {"at_least": 2}  # type: ignore[index]
    assert differences(BACKUP, restored) == [  # type: ignore[arg-type]
        "databases/app/sequences/public.orders_id_seq: at least 3 in the backup, 2 restored",
        "databases/app/tables/public.extra: present after the restore, not in the backup",
        "databases/app/tables/public.orders: missing after the restore",
    ]


def test_informational_names_are_never_compared() -> None:
    restored = {**_copy(BACKUP), "_summary": "other", "_volatile": {"0": 1}}  # type: ignore[dict-item]
    assert differences({**BACKUP, "_volatile": {"0": 5}}, restored) == []


def test_a_shape_change_is_a_difference() -> None:
    assert differences({"a": {"b": 1}}, {"a": 1}) == ["a: 1 entries in the backup, 1 restored"]


def test_reason_is_bounded() -> None:
    named = [f"t{i}: 1 in the backup, 2 restored" for i in range(MAX_NAMED + 5)]
    text = reason(named)
    assert text.endswith("; and 5 more")
    assert text.count("restored") == MAX_NAMED


def test_summary_prefers_the_engines_own() -> None:
    assert summary(BACKUP) == "1 databases, 2 tables, 5 rows, 1 sequences"
    assert summary({"buckets": {"a": {"objects": 2, "etags": "x"}}}) == "2 figures matched"


def test_postgres_summary_counts_databases_tables_rows_sequences() -> None:
    figures = with_summary(BACKUP["databases"])  # type: ignore[arg-type]
    assert figures["_summary"] == "1 databases, 2 tables, 5 rows, 1 sequences"


def test_only_missing_roles_are_created_from_the_globals() -> None:
    globals_sql = "\n".join(
        [
            "CREATE ROLE temps_admin;",
            "ALTER ROLE temps_admin WITH SUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$x';",
            "CREATE ROLE app;",
            "ALTER ROLE app WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$y';",
            'CREATE ROLE "Odd ""name""";',
            'ALTER ROLE "Odd ""name""" WITH NOLOGIN;',
            "ALTER ROLE app SET search_path TO public;",
            "GRANT pg_monitor TO app GRANTED BY temps_admin;",
        ]
    )
    assert missing_role_statements(globals_sql, {"temps_admin", "postgres"}) == (
        "CREATE ROLE app;\n"
        "ALTER ROLE app WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$y';\n"
        'CREATE ROLE "Odd ""name""";\n'
        'ALTER ROLE "Odd ""name""" WITH NOLOGIN;\n'
    )
    assert missing_role_statements(globals_sql, {"temps_admin", "app", 'Odd "name"'}) == ""


def test_a_lower_bound_accepts_what_is_ahead_of_it() -> None:
    ahead = {"seq": {"at_least": 9}}
    assert differences({"seq": {"at_least": 3}}, ahead) == []
    assert differences({"seq": {"at_least": 3}}, {"seq": {"at_least": 3}}) == []
    assert differences({"seq": {"at_least": None}}, ahead) == []  # never called at backup
    assert differences({"seq": {"at_least": 3}}, {"seq": {"at_least": None}}) == [
        "seq: at least 3 in the backup, None restored"
    ]
    assert differences({"seq": {"at_least": 3}}, {"seq": 3}) == [
        "seq: at least 3 in the backup, 3 restored"
    ]


# --- the status rule: a failed verification degrades the service ------------------------------


class _Catalogue:
    """A fake connection answering the newest verification outcome of a service."""

    def __init__(self, row: dict[str, Any] | None) -> None:
        self.row = row

    async def fetchrow(self, query: str, *args: Any) -> dict[str, Any] | None:
        assert "verify_state" in query
        return self.row


FAILED = {"backup_id": "b1", "verify_state": "verification_failed", "verify_reason": "t: 1, 2"}
SERVICE = UUID(int=1)


async def _effective(row: dict[str, Any] | None, status: str, why: str | None) -> tuple[str, Any]:
    return await with_verification(_Catalogue(row), SERVICE, status, why)  # type: ignore[arg-type]


def test_a_failed_verification_keeps_the_service_degraded() -> None:
    status, why = asyncio.run(_effective(FAILED, "operational", None))
    assert status == "degraded"
    assert why == f"{VERIFICATION_REASON} (backup b1): t: 1, 2"
    # The monitor's own reason is kept, the verification's comes last (and only once).
    status, why = asyncio.run(_effective(FAILED, "degraded", "storage; " + str(why)))
    assert (status, why) == ("degraded", f"storage; {VERIFICATION_REASON} (backup b1): t: 1, 2")
    # Down and the provisioner's statuses are not touched.
    assert asyncio.run(_effective(FAILED, "down", "missing")) == ("down", "missing")
    assert asyncio.run(_effective(FAILED, "stopped", None)) == ("stopped", None)


def test_a_verified_newest_backup_changes_nothing() -> None:
    verified = {**FAILED, "verify_state": "verified"}
    assert asyncio.run(_effective(verified, "operational", None)) == ("operational", None)
    assert asyncio.run(_effective(None, "degraded", "storage")) == ("degraded", "storage")
