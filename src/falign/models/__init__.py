"""Reference models built from plain torch layers, looked up by name.

    >>> from falign.models import create_model
    >>> model = create_model("arch1")                 # plain backprop layers
    >>> model = create_model("resnet20", rule="fa")   # converted by falign.layers.convert

Registered names: ``mlp``, ``arch1``, ``lenet``, ``dkp_cnn``, ``resnet``, ``resnet20``,
``resnet56``, ``resnet18`` (ImageNet), ``vit``, ``char_transformer``.
"""

from .arch1 import Arch1
from .dkp_cnn import DKPNet
from .lenet import LeNet
from .mlp import MLP
from .registry import (
    InputTooSmallError,
    ModelError,
    available_models,
    create_model,
    model_from_spec,
    register_model,
)
from .resnet import BasicBlock, CifarResNet, ImageNetResNet, PadShortcut
from .summary import model_summary
from .transformer import CharTransformer, ViT

__all__ = [
    "MLP",
    "Arch1",
    "BasicBlock",
    "CharTransformer",
    "CifarResNet",
    "DKPNet",
    "ImageNetResNet",
    "InputTooSmallError",
    "LeNet",
    "ModelError",
    "PadShortcut",
    "ViT",
    "available_models",
    "create_model",
    "model_from_spec",
    "model_summary",
    "register_model",
]
