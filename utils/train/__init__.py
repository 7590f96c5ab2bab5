"""Training: the architect (alpha step), the engine (train_epoch, evaluate), LR schedules,
stage 2's identity group and a stage's loop (resume, finished stages)."""
