"""Files of a run: checkpoints and their validation, genotype/alphas/groups files, run config,
atomic writes, the folder lock."""
