"""Training decisions that need no model and no cluster: learning-rate control and checkpoint files.

:mod:`returnn_ray.training.lr_control` (newbob and the ``learning_rate_file``) and
:mod:`returnn_ray.training.checkpoints` (checkpoint names, discovery, cleanup, atomic save/load).
Importing this package imports neither torch nor Ray.
"""
