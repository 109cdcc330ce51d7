"""Small helpers configs import from RETURNN's ``returnn.util``; see :mod:`returnn_ray.util.basic`."""
