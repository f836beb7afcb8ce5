from temps_provisioner.main import run

run()
