"""The op registry and its entries (importing this package registers every op)."""

from nasc.ir.ops import elementwise, index, nn, norm_pool, quant, resize, shape_reduce, tensor  # noqa: F401  (registration side effects)
from nasc.ir.ops.registry import (
    AxisGroup,
    Cost,
    InferenceError,
    OpDef,
    infer_node,
    lookup,
    lookup_node,
    register,
    registered_ops,
)

__all__ = [
    "AxisGroup",
    "Cost",
    "InferenceError",
    "OpDef",
    "infer_node",
    "lookup",
    "lookup_node",
    "register",
    "registered_ops",
]
