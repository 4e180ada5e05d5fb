"""The ``dialgate`` command line: one module per command group."""
