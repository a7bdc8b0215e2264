"""The command line: the ``lightning-mem`` dispatcher and the LightningCLI behind ``fit|validate|test``.

- :mod:`~lightning_mem.cli.commands`: the table of subcommands and the dispatcher (starts without torch).
- :mod:`~lightning_mem.cli.fit`: :class:`MemCLI`, run folders, locks, signals and exit codes of a fit.
- :mod:`~lightning_mem.cli.argchecks`: checks of a command line that the config classes cannot make.
- :mod:`~lightning_mem.cli.defaults`: the callbacks every fit gets (alignment, divergence guard, progress).
- :mod:`~lightning_mem.cli.packaged`: the configs and sweeps shipped in the package, by name
  (``lightning-mem configs``).
- :mod:`~lightning_mem.cli.fit_help`: ``fit --help``, the main options (torch-free).

Only this package reads the command line and the environment.
"""
