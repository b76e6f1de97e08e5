from recoverlib.cli import run

run()
