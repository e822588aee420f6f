"""torchvision state dict <-> Flax variables, validated strictly.

Every torch key must be consumed and every Flax leaf filled with the shape the
Flax model expects; all problems are collected into one `ConversionError`.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from convert.mapping import KINDS, key_table
from flax_video.registry import DEPTHS, create_model, list_models


class ConversionError(ValueError):
    """The weights do not fit the model; the message lists every problem."""


def to_numpy(value) -> np.ndarray:
    """A torch tensor (any device, bfloat16 included) or array-like as numpy."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def expected_shapes(model_name: str, num_classes: int) -> dict:
    """{collection: {path tuple + leaf: shape}} of the Flax model's variables."""
    model = create_model(model_name, num_classes=num_classes)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3))))
    return {collection: {tuple(k.key for k in path): leaf.shape
                         for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
            for collection, tree in abstract.items()}


def _num_classes(state_dict: Mapping) -> int:
    if "fc.weight" not in state_dict:
        raise ConversionError("no 'fc.weight' in the state dict: cannot tell num_classes; "
                              "is this a torchvision VideoResNet state dict?")
    return int(np.shape(state_dict["fc.weight"])[0])


def _report(model_name, missing, unexpected, mismatched) -> str:
    lines = [f"the weights do not fit {model_name}:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", mismatched)):
        if items:
            lines.append(f"  {len(items)} {title}:")
            lines += [f"    {item}" for item in items]
    return "\n".join(lines)


def _nested(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


def torchvision_to_flax(state_dict: Mapping, model_name: str) -> dict:
    """torchvision `VideoResNet` state dict (torch tensors or arrays) to Flax
    variables `{"params": ..., "batch_stats": ...}` of numpy arrays.
    `num_classes` is read from the head."""
    expected = expected_shapes(model_name, _num_classes(state_dict))
    flat = {collection: {} for collection in expected}
    consumed, missing, mismatched = set(), [], []
    for entry in key_table(model_name):
        for tensor in KINDS[entry.kind]:
            key = f"{entry.torch_prefix}.{tensor.suffix}"
            path = entry.flax_path + (tensor.leaf,)
            if key not in state_dict:
                missing.append(key)
                continue
            consumed.add(key)
            value = to_numpy(state_dict[key])
            if value.dtype.kind == "f":
                value = value.astype(np.float32)
            value = tensor.to_flax(value)
            want = expected[tensor.collection].get(path)
            if value.shape != want:
                mismatched.append(f"{key}: got {tuple(np.shape(state_dict[key]))}, "
                                  f"{model_name} needs {_torch_shape(tensor, want)}")
            flat[tensor.collection][path] = value
    unexpected = sorted(set(state_dict) - consumed)
    if missing or unexpected or mismatched:
        report = _report(model_name, missing, unexpected, mismatched)
        try:
            report += f"\nthese keys and shapes are those of {infer_variant(state_dict)}"
        except ConversionError:
            pass
        raise ConversionError(report)
    for collection, leaves in expected.items():
        unfilled = set(leaves) - set(flat[collection])
        assert not unfilled, f"key table misses Flax leaves {sorted(unfilled)}"
    return {collection: _nested(leaves) for collection, leaves in flat.items()}


def _torch_shape(tensor, flax_shape):
    if flax_shape is None:
        return "no such tensor"
    return tuple(tensor.to_torch(np.empty(flax_shape, np.int8)).shape)


def _leaf_name(collection: str, path: tuple[str, ...]) -> str:
    return "/".join((collection,) + path)


def _flat_leaves(tree) -> dict:
    return {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def flax_to_torchvision(variables: Mapping, model_name: str) -> dict[str, np.ndarray]:
    """Flax variables to a torchvision state dict of numpy arrays, in
    torchvision's key order (`num_batches_tracked` included, int64). For
    `torch_model.load_state_dict`, wrap the values with `torch.from_numpy`.
    Every variable must be one the model has, with its shape."""
    flat = {collection: _flat_leaves(tree) for collection, tree in variables.items()}
    head = flat.get("params", {}).get(("fc", "bias"))
    if head is None:
        raise ConversionError(_report(model_name, ["params/fc/bias"], [], []))
    expected = expected_shapes(model_name, int(np.shape(head)[0]))
    missing, unexpected, mismatched = [], [], []
    for collection in sorted(set(expected) | set(flat)):
        want, got = expected.get(collection, {}), flat.get(collection, {})
        missing += [_leaf_name(collection, path) for path in want if path not in got]
        unexpected += [_leaf_name(collection, path) for path in got if path not in want]
        mismatched += [f"{_leaf_name(collection, path)}: got {tuple(np.shape(leaf))}, {model_name} needs {want[path]}"
                       for path, leaf in got.items() if path in want and np.shape(leaf) != want[path]]
    if missing or unexpected or mismatched:
        raise ConversionError(_report(model_name, missing, unexpected, mismatched))
    return {f"{entry.torch_prefix}.{tensor.suffix}":
            tensor.to_torch(np.asarray(flat[tensor.collection][entry.flax_path + (tensor.leaf,)]))
            for entry in key_table(model_name) for tensor in KINDS[entry.kind]}


def infer_variant(state_dict: Mapping) -> str:
    """The registry name whose torchvision model has these keys and shapes."""
    keys = set(state_dict)
    if "stem.3.weight" in keys:
        family = "r2plus1d"
    elif "layer2.0.conv2.0.weight" in keys:  # the builder's conv, in both block kinds
        family = "r3d" if np.shape(state_dict["layer2.0.conv2.0.weight"])[2] == 3 else "mc3"
    else:
        raise ConversionError("cannot infer the variant: no torchvision VideoResNet stem or "
                              "layer2 keys found; pass --variant")
    bottleneck = "layer1.0.conv3.0.weight" in keys
    layers = tuple(len({k.split(".")[1] for k in keys if k.startswith(f"layer{s}.")}) for s in (1, 2, 3, 4))
    depths = [d for d, (block, counts) in DEPTHS.items()
              if counts == layers and (block.expansion == 4) == bottleneck]
    if not depths:
        raise ConversionError(f"cannot infer the variant: blocks per layer {list(layers)} "
                              f"({'Bottleneck' if bottleneck else 'BasicBlock'}) match no known depth")
    name = f"{family}_{depths[0]}"
    wide = "layer2.0.conv2.0.0.weight" in keys and np.shape(state_dict["layer2.0.conv2.0.0.weight"])[0] == 288
    if wide:
        name += "_ig65m"
        if name not in list_models():
            raise ConversionError(f"weights look like Caffe2/IG65M {name}, which is not registered")
    return name
