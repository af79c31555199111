"""Side-by-side table of one sitting's benchmark JSONs (cmaae_jax/bench_report.py).

python launch/bench_report.py runs/bench/*.json
"""

import argparse

import _common


def main():
    from cmaae_jax import bench_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="FILE.json", help="benchmark JSONs")
    args = parser.parse_args()
    with _common.user_errors():
        print(bench_report.report(args.paths))


if __name__ == "__main__":
    main()
