"""Generation on the training mesh (8 fake CPU devices, data x fsdp x tensor = 2 x 2 x 2) equals one device."""

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json
import flax.linen as nn, jax, jax.numpy as jnp
from xgen_core.infer.sampler import SamplingConfig, decoder_weights, generate, pad_prompts, prefill
from xgen_core.model.decoder import Decoder
from xgen_core.model.presets import get_preset
from xgen_core.train import mesh as mesh_lib

assert jax.device_count() == 8
spec = get_preset("micro")
model = Decoder(spec, attention_impl="xla", compute_dtype=jnp.float32)
dummy = jnp.zeros((1, 8), jnp.int32)
boxed = model.init(jax.random.key(3), dummy, dummy, dummy + 1)["params"]
params = nn.unbox(boxed)
params["embedding"] = params["embedding"] * 50
mesh = mesh_lib.make_mesh(2, 2, 2)
placed = jax.device_put(params, mesh_lib.logical_shardings(boxed, mesh))
prompts = [[5, 17, 200, 3, 99, 41, 7], [300], [8, 250, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
config = SamplingConfig(max_new_tokens=16, greedy=True)
run = lambda weights, mesh: [g.completion_ids for g in generate(
    decoder_weights(weights, spec), spec, prompts, config, jax.random.key(0), compute_dtype=jnp.float32,
    attention_impl="xla", mesh=mesh)]
sharded = run(placed, mesh)
single = run(params, None)
tokens, positions, segments = pad_prompts(prompts, 4, 32)
with jax.set_mesh(mesh):
    (k_cache, _, _), _ = prefill(decoder_weights(placed, spec), tokens, positions, segments, spec=spec, cache_len=48,
                                 compute_dtype=jnp.float32, attention_impl="xla",
                                 logical_rules=mesh_lib.LOGICAL_RULES)
print(json.dumps({"sharded": sharded, "single": single, "cache_spec": list(k_cache.sharding.spec),
                  "q_spec": str(placed["layers"]["attention"]["q"].sharding.spec)}))
"""


def test_generation_sharded_on_the_training_mesh_equals_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["sharded"] == result["single"]
    assert "tensor" in result["q_spec"]  # the weights really are split
    # Rows over data x fsdp, KV heads over tensor.
    cache_spec = result["cache_spec"] + [None] * (5 - len(result["cache_spec"]))  # trailing Nones are dropped
    assert cache_spec == [None, ["data", "fsdp"], None, "tensor", None]
