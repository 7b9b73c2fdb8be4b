"""convgpu.torch: our kernels inside PyTorch models, autograd and DistributedDataParallel.

    import convgpu.torch as ct
    model = torchvision_or_your_resnet()          # built from torch.nn layers
    ct.convert(model)                             # in place: Conv2d, BatchNorm2d, ... -> ours
    loss = ct.functional.cross_entropy(model(x), y)
    loss.backward()                               # gradients from our backward ops

    conv = ct.Conv2d(3, 16, 3, padding=1)         # or build with our layers directly

Every op with a backward is an autograd.Function (convgpu.torch.functional) whose backward
is made of our backward ops; the layers are torch.nn's with the forward replaced, holding
ordinary Parameters and buffers. Multi-GPU training is torch's DistributedDataParallel
over a converted model (examples/ddp_train.py). Importing this package imports torch;
`import convgpu` does not.
"""
from convgpu.torch import functional  # noqa: F401
from convgpu.torch.modules import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d,  # noqa: F401
                                   Conv2d, ConvTranspose2d, CrossEntropyLoss, Linear,
                                   MaxPool2d, ReLU, convert)

__all__ = ["functional", "convert", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "BatchNorm2d", "Linear", "ReLU", "CrossEntropyLoss"]
