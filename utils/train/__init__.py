"""Training: the architect (alpha step), the engine (train_epoch, evaluate), LR schedules, a
stage's loop and run_all's plan of stages."""
