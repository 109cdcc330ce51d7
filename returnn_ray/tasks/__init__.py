"""One module per task (``train``, ``forward``, ``search``, ``eval``, ``sweep``, ``dump_dataset``),
each with ``run(settings, config) -> exit code``; shared helpers live in :mod:`.common`."""
