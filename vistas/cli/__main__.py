"""``python -m vistas.cli``: the ``vistas`` command (what sweeps, soak tests and the tests spawn)."""

from vistas.cli import console

if __name__ == "__main__":
    console()
