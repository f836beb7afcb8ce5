from temps_monitor.main import run

run()
