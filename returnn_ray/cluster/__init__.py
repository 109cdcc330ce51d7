"""Everything about starting or joining Ray, and about working around Ray.

- :mod:`~returnn_ray.cluster.start`: :func:`~returnn_ray.cluster.start.init_ray`, start an
  embedded Ray or join a cluster, once per process; token auth for a Ray of our own.
- :mod:`~returnn_ray.cluster.head`: a private ``ray start --head`` for scripts (public, for
  ``experiments/asr.py`` and the benchmarks).
- :mod:`~returnn_ray.cluster.placement`: whether the cluster can hold the workers a task asks for.
- :mod:`~returnn_ray.cluster.reaper`: stops what an embedded Ray leaves behind when its driver dies.
- :mod:`~returnn_ray.cluster.interrupts`: Ctrl-C and SIGTERM as an exception, not Ray's silent exit.
- :mod:`~returnn_ray.cluster.env`: every Ray environment variable we set, with its reason.
- :mod:`~returnn_ray.cluster.ray_internals`: every use of Ray's private APIs, and the user's
  error dug out of Ray's exceptions.
- :mod:`~returnn_ray.cluster.data_context`: the settings of Ray Data's global ``DataContext``.

Importing the package imports no Ray (the modules import it where they use it).
"""
