"""Derive a search's genotype from its alphas.json, or check a genotype file, from the shell:
one JSON line on stdout, the cells drawn with --plot (skipped with a warning without
graphviz), a bad file one ``error:`` line naming it (exit 1).

    python -m utils.analysis.derive --alphas runs/exp/search1/alphas.json --plot plots/
    python -m utils.analysis.derive --genotype runs/exp/search2/genotype.txt
"""
from __future__ import annotations

import argparse
import json
import sys

from genotypes import GenotypeError, derive_genotype
from utils.analysis.plots import plot_genotype
from utils.io.genotype_checks import genotype_to_dict
from utils.io.genotype_files import load_alphas, load_genotype


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m utils.analysis.derive",
        description="Derive a genotype from alphas.json, or check a genotype file; prints it as "
                    "one JSON line.", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--alphas", help="alphas.json of a search stage to derive from")
    source.add_argument("--genotype", help="genotype file (JSON or Genotype(...) repr) to check")
    parser.add_argument("--plot", metavar="DIR", help="also draw the cells into DIR")
    args = parser.parse_args(argv)
    try:
        if args.alphas:
            g = derive_genotype(load_alphas(args.alphas), source=args.alphas)
        else:
            g = load_genotype(args.genotype)
        print(json.dumps(genotype_to_dict(g)))
        if args.plot:
            plot_genotype(g, args.plot)
    except (GenotypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
