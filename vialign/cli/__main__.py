from vialign.cli import app

app()
