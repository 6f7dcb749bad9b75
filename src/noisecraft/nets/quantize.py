"""Int8 weights for CPU inference: every linear layer of a network as a dynamically quantised one
(int8 weights per output channel, activations quantised per call; Jacob et al. 2018).

Only for sampling on CPU: the result differs from the fp32 network by rounding of order 1 % (see
``relative_error``), and quantised layers cannot be trained. Convolutions stay fp32 (dynamic
quantisation covers linears only). The speed and quality measured: benchmarks/sd_speed_memory.py.
"""

from __future__ import annotations

import warnings

from torch import Tensor, nn

QUANTIZE = ("none", "int8")


def quantize_int8(net: nn.Module) -> nn.Module:
    """``net`` with every nn.Linear (TokenLinear included) replaced in place by a dynamic int8 linear."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    for name, child in list(net.named_children()):
        if isinstance(child, nn.Linear):
            plain = nn.Linear(child.in_features, child.out_features, child.bias is not None)
            plain.load_state_dict(child.state_dict())
            plain.qconfig = per_channel_dynamic_qconfig
            with warnings.catch_warnings():  # torch.ao's notice that it moves to the torchao package
                warnings.simplefilter("ignore")
                setattr(net, name, DynamicLinear.from_float(plain))
        else:
            quantize_int8(child)
    return net


def relative_error(reference: Tensor, approximation: Tensor) -> float:
    """‖approximation − reference‖ / ‖reference‖ over the whole tensor."""
    return float((approximation - reference).norm() / reference.norm())
