"""torchvision video ResNet weights to Flax variables and back."""
from convert.core import (ConversionError, flax_to_torchvision, infer_variant,
                          torchvision_to_flax)
from convert.files import read_state_dict, write_state_dict


def load_torchvision_weights(path, model_name=None):
    """Read a `.pth`/`.pt`/`.safetensors` file and convert it in memory.
    Returns `(variables, model_name)`; the name is inferred when not given."""
    state_dict = read_state_dict(path)
    model_name = model_name or infer_variant(state_dict)
    return torchvision_to_flax(state_dict, model_name), model_name


__all__ = ["ConversionError", "flax_to_torchvision", "infer_variant", "load_torchvision_weights",
           "read_state_dict", "torchvision_to_flax", "write_state_dict"]
