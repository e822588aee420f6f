"""The models as Flax NNX modules, through Flax's own bridge (`nnx.bridge.ToNNX`).

    model = flax_video.nnx.create_model("r2plus1d_18", variables)   # linen variables, e.g. load_pretrained's
    model.eval(); logits = model(clips)                            # running statistics
    model.train(); logits = model(clips)                           # batch statistics, running ones updated

The NNX module holds the linen model's variables as `nnx.Param` (params) and
`nnx.BatchStat` (batch_stats) at the same paths, and computes with the linen
module itself, so it is the same function with the same BatchNorm updates;
`linen_variables(model)` gives them back as linen variables.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import bridge

from flax_video import registry

_COLLECTIONS = {nnx.Param: "params", nnx.BatchStat: "batch_stats"}


class VideoResNet(nnx.Module):
    """A linen `VideoResNet` as an NNX module; `train()` and `eval()` switch
    BatchNorm between batch and running statistics (eval by default)."""

    def __init__(self, linen_model, net: bridge.ToNNX):
        self.linen_model = linen_model
        self.net = net
        self.use_running_average = True

    def __call__(self, clips: jax.Array) -> jax.Array:
        if self.use_running_average:
            return self.net(clips, train=False, mutable=False)
        return self.net(clips, train=True, mutable=["batch_stats"])


_INIT_CLIP = jax.ShapeDtypeStruct((1, 4, 32, 32, 3), jnp.float32)


def _abstract_net(linen_model) -> bridge.ToNNX:
    """The bridged module with shapes only: the structure to fill."""
    def build():
        net = bridge.ToNNX(linen_model, rngs=nnx.Rngs(0)).lazy_init(jnp.zeros(_INIT_CLIP.shape), train=False)
        net.to_nnx__rngs = None  # the forward pass draws no random numbers: the state is the variables alone
        return net
    return nnx.eval_shape(build)


def from_linen(linen_model, variables: dict) -> VideoResNet:
    """The NNX module of `linen_model` holding `variables` ({"params",
    "batch_stats"}); nothing is initialized."""
    graphdef, abstract = nnx.split(_abstract_net(linen_model))
    flat = []
    for path, leaf in nnx.to_flat_state(abstract):
        collection = _COLLECTIONS.get(type(leaf))
        if collection is None:
            raise TypeError(f"unexpected state {path}: {type(leaf).__name__}")
        node = variables[collection]
        for key in path:
            node = node[key]
        if jnp.shape(node) != leaf.get_value().shape:
            raise ValueError(f"{collection}/{'/'.join(map(str, path))}: shape {jnp.shape(node)}, "
                             f"the model expects {leaf.get_value().shape}")
        flat.append((path, leaf.replace(jnp.asarray(node))))
    return VideoResNet(linen_model, nnx.merge(graphdef, nnx.from_flat_state(flat)))


def create_model(name: str, variables: dict | None = None, *, rngs: nnx.Rngs | None = None,
                 num_classes: int | None = None, **kwargs: Any) -> VideoResNet:
    """A registered model as an NNX module: holding `variables` (linen
    variables, e.g. a converted checkpoint or `load_pretrained`'s), or
    initialized as torchvision does from `rngs` (default `nnx.Rngs(0)`).
    Other arguments go to `flax_video.create_model`."""
    if num_classes is None and variables is not None:
        head = variables["params"].get("fc")
        num_classes = head["bias"].shape[0] if head is not None else 0
    linen_model = registry.create_model(name, num_classes=num_classes, **kwargs)
    if variables is None:  # linen's own init, from the Rngs' params stream
        init = jax.jit(functools.partial(linen_model.init, train=False))
        variables = init((rngs or nnx.Rngs(0)).params(), jnp.zeros(_INIT_CLIP.shape))
    return from_linen(linen_model, variables)


def linen_variables(model: VideoResNet) -> dict:
    """The NNX module's state as linen variables {"params", "batch_stats"}."""
    result: dict = {"params": {}, "batch_stats": {}}
    for path, leaf in nnx.to_flat_state(nnx.state(model.net)):
        node = result[_COLLECTIONS[type(leaf)]]
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf.get_value()
    return result
