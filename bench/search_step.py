"""Images/s and peak memory of one search1 step (14 cells) and one search2 step (20 cells, all
separable) at batch 64, 16 channels. Options: python bench/step_bench.py --help."""
import sys

from step_bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_configs="search1,search2"))
