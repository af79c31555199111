"""Side-by-side table of one sitting's benchmark JSONs, or the ratios of several sittings
(one folder each) together (cmaae_jax/bench_report.py).

python launch/bench_report.py runs/bench/*.json
python launch/bench_report.py runs/bench/sitting1 runs/bench/sitting2 ...
"""

import argparse
import os

import _common


def main():
    from cmaae_jax import bench_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="one sitting's JSONs, or sittings' folders"
    )
    args = parser.parse_args()
    is_folder = [os.path.isdir(p) for p in args.paths]
    if any(is_folder) and not all(is_folder):
        parser.error("give one sitting's JSON files or sittings' folders, not both")
    with _common.user_errors():
        if all(is_folder):
            print(bench_report.across_sittings(args.paths))
        else:
            print(bench_report.report(args.paths))


if __name__ == "__main__":
    main()
