"""Tools for experiment scripts (``experiments/asr.py``; a script of your own can use them too).

The top layer: it runs ``returnn-ray`` commands, so it may import everything below, and nothing
of the package imports it.

* :mod:`.stages`: ``returnn-ray`` commands run as timed stages, their figures read from each
  stage's metrics file.
* :mod:`.warm_start`: commands run as forks of a process that imported torch and Ray once.
"""
