"""The process a stage runs in: device and speed policy, distributed training, signals, logs, the
command-line guard."""
