"""selffeed: self-feedback iterative optimization of causal language models.

The core library, one folder per part of the loop: ``recipes`` (the tasks and their data), ``training``,
``sampling``, ``filtering``, ``evaluation``, ``loop`` (the round loop and its stages), ``run`` (a run on
disk and its bookkeeping) and ``experiments`` (control arms). It never imports Prefect; ``tasks/`` wraps
the stages as Prefect tasks and ``flows/`` composes them.
"""

import os

# Runs that share cores (a nightly round beside a manual run, or beside the tests): libgomp's idle threads
# spin a long while before they sleep, and each process's spinning starves the other's work. A short spin
# keeps a lone run's speed and shares the cores fairly (benchmarks/shared_cores.py measures both). libgomp reads it when torch loads, so it is set
# here, before any selffeed module imports torch; a value already in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
