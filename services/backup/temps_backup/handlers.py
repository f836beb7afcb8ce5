"""One handler per command type, registered explicitly."""

from __future__ import annotations

from temps_shared.bus.consume import Handler, OnTerminal
from temps_shared.messages import (
    Command,
    ConfigureWalArchiving,
    RestoreBackup,
    RestoreToTime,
    RunBackup,
    VerifyBackup,
)
from temps_shared.worker import CommandHandler, dispatcher, terminal_announcer

from temps_backup.context import BackupWorker
from temps_backup.pitr_restore import announce_pitr_failure, handle_restore_to_time
from temps_backup.restore_backup import announce_restore_failure, handle_restore_backup
from temps_backup.run_backup import announce_backup_failure, handle_run_backup
from temps_backup.verify_backup import announce_verification_failure, handle_verify_backup
from temps_backup.wal_archiving import (
    announce_wal_archiving_failure,
    handle_configure_wal_archiving,
)

HANDLERS: dict[type[Command], CommandHandler[BackupWorker]] = {
    RunBackup: handle_run_backup,
    RestoreBackup: handle_restore_backup,
    VerifyBackup: handle_verify_backup,
    ConfigureWalArchiving: handle_configure_wal_archiving,
    RestoreToTime: handle_restore_to_time,
}


def make_handler(w: BackupWorker) -> Handler:
    return dispatcher("backup", w, HANDLERS)


def make_on_terminal(w: BackupWorker) -> OnTerminal:
    return terminal_announcer(
        w,
        {
            RunBackup: announce_backup_failure,
            RestoreBackup: announce_restore_failure,
            VerifyBackup: announce_verification_failure,
            ConfigureWalArchiving: announce_wal_archiving_failure,
            RestoreToTime: announce_pitr_failure,
        },
    )
