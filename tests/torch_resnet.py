"""A small ResNet of torch.nn layers for the bridge's tests (tests/test_torch_*.py): a
conv-bn-relu stem, max pooling, two basic blocks (the second downsamples, with a 1x1 conv +
batch norm shortcut), adaptive average pooling and a linear head. In-place ReLUs and the
in-place residual add, as torchvision's BasicBlock."""
import copy
import os
import sys

import torch
from torch import nn

# torchvision's BasicBlock, as the DDP example writes it out for its readers
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from ddp_train import Block  # noqa: E402


class ResNet(nn.Module):
    def __init__(self, cin=1, width=4, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet(seed=0, dtype=torch.float64, **kw):
    """The same weights for the same seed; batch norms with non-trivial affine parameters."""
    torch.manual_seed(seed)
    model = ResNet(**kw).to(dtype)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def twin(model):
    """An independent copy (parameters not shared)."""
    return copy.deepcopy(model)


def sgd_steps(model, batches, lr=0.05, momentum=0.9, weight_decay=1e-3, loss_fn=None):
    """One SGD step per (x, y) batch; each batch may be a list of (x, y) parts whose mean
    loss is taken (the per-rank halves of a DDP step). Returns the losses."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    losses = []
    for batch in batches:
        parts = batch if isinstance(batch, list) else [batch]
        opt.zero_grad()
        loss = sum(loss_fn(model(x), y) for x, y in parts) / len(parts)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def rel(a, b):
    """||a - b|| / ||b|| (b == 0: ||a - b||)."""
    a, b = a.detach().double(), b.detach().double()
    den = b.norm().item()
    return (a - b).norm().item() / (den if den > 0 else 1.0)
