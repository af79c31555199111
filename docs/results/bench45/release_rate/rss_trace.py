import os, sys, time, ctypes
sys.path.insert(0, "/work/main")
import jax
jax.config.update("jax_num_cpu_devices", 2)
from cmaae_jax import benchmark
from cmaae_jax import state as state_lib
from configs import default
def mem():
    d = {}
    for l in open("/proc/self/status"):
        if l.startswith(("VmRSS", "VmHWM")):
            k, v = l.split(":"); d[k] = int(v.split()[0]) // 1024
    return d
release = os.environ.get("RELEASE_AFTER_SETUP") == "1"
opts = benchmark.Options(batch=512, steps_per_call=4)
print("start", mem())
net, step, cs, state, args = benchmark.stage1_step(opts, default.get_config())
print("setup", mem())
if release:
    lib = ctypes.CDLL(None)
    lib.MallocExtension_ReleaseFreeMemory()
    print("released", mem())
for i in range(6):
    t = time.perf_counter()
    state, m = step(state, *args); jax.block_until_ready((state, m))
    print("call", i, round((time.perf_counter() - t) / 4, 3), mem())
