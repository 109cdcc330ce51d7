"""Old import path of configs: ``returnn_ray.tensor`` is RETURNN's ``returnn.tensor``.

See :mod:`returnn_ray.frontend`: this module replaces itself by ``returnn.tensor``. New configs
should ``from returnn.tensor import Tensor, Dim, TensorDict, batch_dim``.
"""

import sys

import returnn.tensor

sys.modules[__name__] = returnn.tensor
