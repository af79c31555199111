"""The GPU path, proven on a CPU machine: lowered for CUDA, the training step and the map
function use native convolutions only, and none of the CPU formulation (layers.py `matmul`).

The CUDA modules are compared with the same functions built with `impl="xla"` (native `lax`
convolutions) and lowered for CUDA: the counts of convolutions and of matrix products must be
equal. The CPU lowering of the default (`auto`) model must instead equal the `matmul` model's,
which has more convolutions and more matrix products (asserted, so the comparison can fail).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
from conftest import tiny_config

from cmaae_jax import export, inference, model, replicas, scoring, sharded_state, train
from cmaae_jax import state as state_lib


def _op_counts(stablehlo_text: str) -> dict:
    """Occurrences of the ops that tell the formulations apart, in a StableHLO module."""
    ops = ("convolution", "dot_general", "concatenate")
    return {op: len(re.findall(rf"stablehlo\.{op}\b", stablehlo_text)) for op in ops}


def _step_text(config, impl: str, platform: str) -> str:
    """The stage-2 training step of 2 devices lowered for `platform`. `jax.pmap` in this JAX
    lowers through jit and takes no target platform, so the device step is mapped by `vmap`
    with the same axis name: the same per-device program and collectives."""
    with config.unlocked():
        config.model.conv_impl = impl
    net = model.from_config(config)
    state = state_lib.to_stage2(config, state_lib.init_state(config, net))
    tx = state_lib.make_optimizer(config, state.params, 2)
    step = jax.jit(jax.vmap(train.device_step(config, net, 2, tx), axis_name=replicas.AXIS))
    stack = lambda tree: jax.tree.map(lambda x: jnp.stack([x, x]), tree)  # noqa: E731
    images = jnp.zeros((2, 2, 64, 64, 3), jnp.uint8)
    bank = stack(jnp.zeros((2, 64, 64, 3)))
    keys = jax.random.split(jax.random.key(0), 2)
    traced = step.trace(sharded_state.shapes(state, 2), images, bank, keys)
    return traced.lower(lowering_platforms=(platform,)).as_text()


def _map_text(impl: str, platform: str) -> str:
    net = model.CMAAE(memory_size=16, impl=impl)
    variables = jax.jit(lambda key: model.init(net, key))(jax.random.key(0))
    fn = scoring.make_map_fn(net, "msfr", (1, 2, 3), stride=32)
    images = jnp.zeros((2, 128, 128, 3), jnp.float32)
    return fn.trace(variables, images).lower(lowering_platforms=(platform,)).as_text()


def test_pmapped_train_step_lowered_for_cuda_uses_native_convolutions_only(tmp_path):
    config = tiny_config(tmp_path)
    cuda_auto = _op_counts(_step_text(config, "auto", "cuda"))
    cuda_native = _op_counts(_step_text(config, "xla", "cuda"))
    cpu_auto = _op_counts(_step_text(config, "auto", "cpu"))
    cpu_matmul = _op_counts(_step_text(config, "matmul", "cpu"))
    assert cuda_auto == cuda_native, (cuda_auto, cuda_native)
    assert cpu_auto == cpu_matmul, (cpu_auto, cpu_matmul)
    # The two formulations differ, so the equalities above can fail: the CPU one computes the
    # first decoder layer, the last encoder layer and weight gradients as matmuls, and the
    # stride-2 transposed convs as four 2x2 convs each (more convolutions).
    assert cpu_matmul["dot_general"] > cuda_native["dot_general"]
    assert cpu_matmul["convolution"] > cuda_native["convolution"]


def test_map_function_lowered_for_cuda_uses_native_convolutions_only():
    cuda_auto, cuda_native = (
        _op_counts(_map_text("auto", "cuda")),
        _op_counts(_map_text("xla", "cuda")),
    )
    cpu_auto, cpu_matmul = (
        _op_counts(_map_text("auto", "cpu")),
        _op_counts(_map_text("matmul", "cpu")),
    )
    assert cuda_auto == cuda_native, (cuda_auto, cuda_native)
    assert cpu_auto == cpu_matmul, (cpu_auto, cpu_matmul)
    assert cpu_matmul != cuda_native


def test_cuda_and_cpu_export_made_here_runs_on_cpu_like_the_library(tmp_path):
    """An artefact exported on this CPU machine for (cuda, cpu) holds both formulations (its
    module has the native convs of the CUDA branch besides the CPU one's) and, called here,
    gives the library's own maps."""
    config = tiny_config(tmp_path)
    with config.unlocked():
        config.score.scales = (1, 2, 3)
        config.score.stride = 32
    net = model.from_config(config)
    variables = jax.jit(lambda key: model.init(net, key))(jax.random.key(1))
    both = export.export_map_fn(config, variables, batch=2, platforms=("cuda", "cpu"))
    assert set(both.platforms) == {"cuda", "cpu"}
    cuda_only = export.export_map_fn(config, variables, batch=2, platforms=("cuda",))
    cpu_only = export.export_map_fn(config, variables, batch=2, platforms=("cpu",))
    n_both, n_cuda, n_cpu = (
        _op_counts(e.mlir_module())["convolution"] for e in (both, cuda_only, cpu_only)
    )
    assert n_cuda != n_cpu and n_both >= n_cuda + n_cpu, (n_both, n_cuda, n_cpu)
    images = jax.random.uniform(jax.random.key(2), (2, 64, 64, 3), minval=-1.0, maxval=1.0)
    expected = scoring.make_map_fn(net, "msfr", (1, 2, 3), stride=32)(variables, images)
    np.testing.assert_allclose(np.asarray(both.call(images)), np.asarray(expected), rtol=1e-5)


def test_steps_and_scorers_built_for_this_machines_devices_trace_only_its_formulation(tmp_path):
    # `per_platform` traces every platform's branch of the default (`auto`) model; the pmapped
    # training step and the in-process scorer run only on this process's CPU devices, so they
    # take the CPU formulation directly: no platform branch in their programs.
    config = tiny_config(tmp_path)
    net = model.from_config(config)
    assert net.impl == "auto"
    assert model.for_local_devices(net).impl == "matmul"
    assert model.for_local_devices(net.clone(impl="xla")).impl == "xla"  # a choice stays
    state = state_lib.to_stage2(config, state_lib.init_state(config, net))
    tx = state_lib.make_optimizer(config, state.params, 2)
    d = jax.local_device_count()
    images = jnp.zeros((d, 2, 64, 64, 3), jnp.uint8)
    bank = replicas.replicate(jnp.zeros((2, 64, 64, 3)))
    args = (sharded_state.shapes(state), images, bank, replicas.replicate(jax.random.key(0)))
    pmapped = jax.make_jaxpr(train.make_train_step(config, net, 2, tx))(*args)
    mapped = jax.vmap(train.device_step(config, net, 2, tx), axis_name=replicas.AXIS)
    assert "platform_index" in str(jax.make_jaxpr(mapped)(*args))  # what is left out
    assert "platform_index" not in str(pmapped)
    scorer = inference.Scorer(config, jax.device_get(model.init(net, jax.random.key(0))))
    picture = jnp.zeros((1, 64, 64, 3), jnp.float32)
    scored = jax.make_jaxpr(scorer.spread_fn)(scorer.spread_variables, picture)
    assert "platform_index" not in str(scored)
