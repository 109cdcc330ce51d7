"""Network dicts (RETURNN TF-layers style) rebuilt as PyTorch modules.

>>> from returnn_ray.data.base import DataSpec
>>> net = build_network({"output": {"class": "softmax", "loss": "ce"}},
...                     {"data": DataSpec(4), "classes": DataSpec(3, sparse=True, dtype="int32")})
>>> sorted(net.state_dict())
['layers.output.linear.bias', 'layers.output.linear.weight']
"""

from returnn_ray.model.layers import LayerOutput, OutSpec
from returnn_ray.model.losses import LossValue, learning_rate_file_keys
from returnn_ray.model.network import LossSpec, Network, build_network

__all__ = ["LayerOutput", "LossSpec", "LossValue", "Network", "OutSpec", "build_network", "learning_rate_file_keys"]
