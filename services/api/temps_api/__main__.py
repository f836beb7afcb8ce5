from temps_api.main import run

run()
