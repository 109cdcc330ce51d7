"""Training: the driver side of a run on Ray Train workers and the loop every worker runs.

The driver: :mod:`~returnn_ray.training.driver` (checks before Ray starts, ``run_on_workers``)
hands every worker one :class:`~returnn_ray.training.job.WorkerJob`. A worker runs
:mod:`~returnn_ray.training.recipe` (``TrainingRecipe``: setup, resume, train an epoch, evaluate,
save) or :mod:`~returnn_ray.training.eval_worker`. Below them, decisions that need no model and no
cluster: :mod:`~returnn_ray.training.lr_control` (newbob), :mod:`~returnn_ray.training.lr_file`
(the ``learning_rate_file`` format) and :mod:`~returnn_ray.training.checkpoints` (checkpoint
names, discovery, cleanup, atomic save/load, the mid-epoch state). Importing this package alone
imports neither torch nor Ray.
"""
