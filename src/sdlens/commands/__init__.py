"""The CLI commands: one module per command, each with one ``run`` function (its options are its parameters),
registered by ``sdlens.cli`` from its one list, ``COMMANDS``. A command parses and prints: it prints through
``sdlens.console`` and leaves the checks of option values to the API functions that take them."""
