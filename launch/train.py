"""Trains CMA-AE (both stages, resuming from the workdir) and evaluates it.

    python launch/train.py --config configs/demo.py --workdir runs/demo
    python launch/train.py --config configs/wood.py --workdir runs/wood \
        --config.train.stage1_steps=100

Multi-host: run one process per host with --coordinator=host:port --num_processes=N
--process_id=i (or the JAX_COORDINATOR_ADDRESS environment of your cluster).

The console shows progress bars, warnings and a closing table; the libraries' logs go to
<workdir>/log.txt (--verbosity=0 or --alsologtostderr shows them too).
"""

import _common
from absl import app, flags
from ml_collections import config_flags

from cmaae_jax import console, devices, evaluate, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and eval.")
_EVAL = flags.DEFINE_bool("evaluate", True, "Evaluate after training.")
_COORD = flags.DEFINE_string("coordinator", "", "Multi-host: coordinator address host:port.")
_NPROC = flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
_PID = flags.DEFINE_integer("process_id", 0, "Multi-host: index of this process.")
_CPU = _common.define_cpu_devices_flag()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    _common.set_cpu_devices(_CPU.value)
    devices.maybe_initialize_distributed(_COORD.value, _NPROC.value, _PID.value)
    _common.setup_console(_WORKDIR.value, create=True)
    with _common.user_errors():
        train.train(_CONFIG.value, _WORKDIR.value)
        result = evaluate.evaluate(_CONFIG.value, _WORKDIR.value) if _EVAL.value else None
    console.print_summary(result, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=_common.parse_flags)
