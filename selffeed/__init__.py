"""selffeed: self-feedback iterative optimization of causal language models.

The core library: typed configs, the run layout, models, fine-tuning, sampling, filters, scorers,
validation, loop decisions and the stage functions that tie them together. It never imports Prefect;
``tasks/`` wraps the stages as Prefect tasks and ``flows/`` composes them.
"""

import os

# Runs that share cores (a nightly round beside a manual run, or beside the tests): libgomp's idle threads
# spin 300,000 times before they sleep, each process's spinning starves the other's work, and two demo
# fine-tunes started together took 4-27x their time alone. A short spin keeps a lone run's speed and
# shares the cores fairly (benchmarks/shared_cores.py). libgomp reads it when torch loads, so it is set
# here, before any selffeed module imports torch; a value already in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
