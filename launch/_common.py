"""Shared set-up of the launch scripts: import path, a caching allocator for XLA's large host
buffers (a restart, before anything else runs), device flags, the console, user errors as
one line."""

import contextlib
import errno
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so that configs can `from configs import default`

from cmaae_jax import devices  # noqa: E402  (after the path; imports no JAX)

try:
    devices.restart_with_allocator()
except devices.DeviceError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def define_cpu_devices_flag():
    """The absl flag `--cpu_devices` of the training entry points (devices.set_cpu_devices)."""
    from absl import flags

    return flags.DEFINE_integer(
        "cpu_devices", -1, "Virtual CPU devices (0: one, JAX's default; -1: auto)."
    )


def set_cpu_devices(n: int):
    with user_errors():
        devices.set_cpu_devices(n)


def setup_console(workdir=None, create: bool = False):
    """Quiet console and `<workdir>/log.txt` (cmaae_jax/console.py); after jax.distributed."""
    import jax

    from cmaae_jax import console
    from cmaae_jax import workdir as workdir_lib

    console.setup()  # first: starting jax's backends logs INFO
    if workdir:
        console.setup(workdir_lib.log_path(workdir, jax.process_index()), create)


def parse_flags(argv):
    """absl's flag parsing (`app.run(main, flags_parser=...)`); a config file that does not
    load, or a --config override that names no field, is one line and exit 2 (ml_collections
    raises a traceback for both)."""
    from absl import app, flags

    try:
        args = app.parse_flags_with_usage(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].present:
            flags.FLAGS["config"].value.keys()  # a file that failed to load raises here
    except (AttributeError, KeyError) as e:
        cause = e.args[0] if e.args else e
        cause = cause.args[0] if isinstance(cause, KeyError) and cause.args else cause
        print(f"error: unknown config field in a --config override: {cause}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return args


@contextlib.contextmanager
def user_errors():
    """Bad input (config, data, checkpoint, device setting) ends with one line and exit 2."""
    from cmaae_jax import console, errors

    try:
        yield
    except (errors.UserError, FileNotFoundError, FloatingPointError) as e:
        console.close_bars()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        console.close_bars()
        print(f"error: disk full: {e}", file=sys.stderr)
        sys.exit(2)
