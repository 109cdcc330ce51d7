"""One module per task (``train``, ``forward``, ``search``, ``eval``, ``sweep``, ``dump_dataset``),
each with ``run(settings, config) -> exit code``; opening the config's datasets lives in the data
layer (:mod:`returnn_ray.data.from_settings`)."""
