"""run_all.py's pipeline: the plan of stages per preset, method and seed, what counts as a
finished stage, and how a stage ended."""
