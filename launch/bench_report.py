"""Side-by-side table of one sitting's benchmark JSONs (cmaae_jax/bench_report.py).

python launch/bench_report.py runs/bench/*.json
"""

import sys

import _common  # noqa: F401  (puts the repository on sys.path)


def main(argv=None):
    from cmaae_jax import bench_report

    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        sys.exit("usage: python launch/bench_report.py FILE.json [FILE.json ...]")
    print(bench_report.report(paths))


if __name__ == "__main__":
    main()
