"""``python -m emulator.containers``: see :func:`emulator.containers.serve.main`."""

from emulator.containers.serve import main

main()
