"""One process of a local multi-host training run (started by tests/test_multihost.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/multihost_worker.py \
        --port=PORT --num_processes=2 --process_id=I --config=CONFIG.json --workdir=W --out=P.npz

Initialises `jax.distributed` on localhost (CPU collectives: gloo, the jax default) through
the same helper as `launch/train.py`, runs `train.train` and saves the final parameters of this
process to `--out` for the test to compare.
"""

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--num_processes", type=int, default=2)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--config", required=True, help="JSON of a ConfigDict")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from cmaae_jax import devices  #  (after sys.path)

    coordinator = f"localhost:{args.port}" if args.num_processes > 1 else ""
    devices.maybe_initialize_distributed(coordinator, args.num_processes, args.process_id)

    import jax
    import ml_collections
    import numpy as np
    from absl import flags

    from cmaae_jax import train

    config = ml_collections.ConfigDict(json.loads(pathlib.Path(args.config).read_text()))
    state = train.train(config, args.workdir)
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    arrays = {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}
    info = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "step": int(state.step),
        "orbax_coordinator_barriers": getattr(flags.FLAGS, devices.ORBAX_BARRIER_FLAG),
    }
    np.savez(args.out, __info__=json.dumps(info), **arrays)
    print(json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
