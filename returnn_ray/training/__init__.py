"""Training decisions that need no model and no cluster: learning-rate control and checkpoint files.

:mod:`returnn_ray.training.lr_control` (newbob), :mod:`returnn_ray.training.lr_file` (the
``learning_rate_file`` format) and
:mod:`returnn_ray.training.checkpoints` (checkpoint names, discovery, cleanup, atomic save/load).
Importing this package imports neither torch nor Ray.
"""
