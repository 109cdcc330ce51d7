"""Forward and search tasks: a loaded model over a dataset, spread over the Ray cluster,
exactly once and resumable (:mod:`returnn_ray.inference.run`)."""
