"""The ``queuechat`` command line: one entry point, subcommands loaded lazily."""
