"""selffeed: self-feedback iterative optimization of causal language models.

The core library: typed configs, the run layout, models, fine-tuning, sampling, filters, scorers,
validation, loop decisions and the stage functions that tie them together. It never imports Prefect;
``tasks/`` wraps the stages as Prefect tasks and ``flows/`` composes them.
"""
