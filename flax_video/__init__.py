"""torchvision's video ResNets (r3d, mc3, r2plus1d) as Flax linen modules."""
from flax_video.xla_cpu import enable_ynnpack

enable_ynnpack()

from flax_video.export import load_exported
from flax_video.labels import KINETICS400_CLASSES
from flax_video.pretrained import load_variables
from flax_video.registry import create_model, list_models
from flax_video.resnet import VideoResNet
from flax_video.weights import Weights, get_weights, load_pretrained

__all__ = ["KINETICS400_CLASSES", "VideoResNet", "Weights", "create_model", "get_weights", "list_models",
           "load_exported", "load_pretrained", "load_variables"]
