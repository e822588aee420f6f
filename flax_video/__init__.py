"""torchvision's video ResNets (r3d, mc3, r2plus1d) as Flax linen modules."""
from flax_video.xla_cpu import enable_ynnpack

enable_ynnpack()

from flax_video.labels import KINETICS400_CLASSES
from flax_video.pretrained import load_variables
from flax_video.registry import create_model, list_models
from flax_video.resnet import VideoResNet

__all__ = ["KINETICS400_CLASSES", "VideoResNet", "create_model", "list_models", "load_variables"]
