"""``python -m lightning_mem ...``: the same command as ``lightning-mem``
(:mod:`lightning_mem.cli.commands`)."""

from lightning_mem.cli.commands import main

if __name__ == "__main__":
    main()
