from temps_backup.main import run

run()
