import flax.linen as nn
import jax
import pytest
from jax.sharding import PartitionSpec as P

from xgen_core.model.info import abstract_params
from xgen_core.model.presets import get_preset

from xgen_core.errors import XgenError
from xgen_core.train.mesh import LOGICAL_RULES, mesh_shape


def test_minus_one_takes_the_remaining_devices():
    assert mesh_shape(2, -1, 2, 16) == (2, 4, 2)
    assert mesh_shape(1, 1, -1, 8) == (1, 1, 8)


@pytest.mark.parametrize("shape,devices", [((3, -1, 1), 8), ((2, 2, 1), 8), ((-1, -1, 1), 8)])
def test_impossible_meshes_are_refused(shape, devices):
    with pytest.raises(XgenError):
        mesh_shape(*shape, devices)


def test_every_parameter_axis_name_has_a_rule():
    specs = nn.get_partition_spec(abstract_params(get_preset("xgen-small-9b")))
    used = {name for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)) for name in spec}
    assert used == {"layers", "vocab", "embed", "mlp", "q_heads", "kv_heads", "kv", "norm"}
    assert used <= {name for name, _ in LOGICAL_RULES}
