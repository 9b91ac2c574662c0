"""Hardware-aware search (``nasc search``): a pipeline space with ranges and choices (space.py), an Optuna study
whose trials build and measure candidates on a target (study.py), the Pareto front's files and ``--pick``
(front.py), and the whole search from a model and a target (run.py)."""
