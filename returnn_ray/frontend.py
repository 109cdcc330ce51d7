"""Old import path of configs: ``import returnn_ray.frontend as rf`` is RETURNN's ``returnn.frontend``.

returnn-ray once carried a partial copy of RETURNN's frontend here. Configs now run through
RETURNN's own (see :mod:`returnn_ray.model.torch_engine`), so this module replaces itself by
``returnn.frontend``: configs that import it keep working and get exactly what RETURNN gives.
New configs should ``import returnn.frontend as rf``.
"""

import sys

import returnn.frontend

sys.modules[__name__] = returnn.frontend
