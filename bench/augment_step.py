"""Images/s and peak memory of one augment training step: DARTS_V2, 36 channels, 20 cells,
batch 96, auxiliary head. Options: python bench/step_bench.py --help."""
import sys

from step_bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_configs="augment"))
