"""Namespace of the Python config files, importable in any process (see :mod:`returnn_ray.config`).

In the driver, :class:`returnn_ray.config.Config` registers its own module under this name
when it executes a Python config. In a fresh process (a Ray worker unpickling
``returnn_ray._user_config.get_model``), importing this file replays the driver's config,
recorded in ``$RETURNN_RAY_CONFIG_FILES``, into this module. Without that variable the module
stays empty. Every name here starts with ``_``: the config's own globals live here.
"""

import sys as _sys

from returnn_ray.config.workers import populate_worker_module as _populate

_populate(_sys.modules[__name__])
