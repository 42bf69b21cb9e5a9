"""Model factories, looked up by name: ``create_model("resnet", num_classes=10, depth=18)``."""

from vislang.models import backbones as backbones  # noqa: F401  (registers the pretrained 'timm' model)
from vislang.models import caption as caption  # noqa: F401  (registers the caption decoders)
from vislang.models import image as image  # noqa: F401  (registers the image models)
from vislang.models import text as text  # noqa: F401  (registers the text models)
from vislang.models.registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "create_model", "list_models", "register_model"]
