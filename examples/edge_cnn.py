"""A user's own CNN, plain torch.nn, for the PyTorch bridge: ``--models examples/edge_cnn.py:make``.

A small VGG-like detector backbone at 224 x 224 (3 x 3 convolutions with batch norm, max pooling, a
classifier), none of whose layer tables is in the zoo.
"""

import torch.nn as nn


def _block(cin: int, cout: int, convs: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    return layers + [nn.MaxPool2d(2)]


def make():
    """The module and its input shape (C, H, W)."""
    model = nn.Sequential(*_block(3, 32, 1), *_block(32, 64, 2), *_block(64, 128, 2), *_block(128, 256, 2),
                          nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(256, 100))
    return model, (3, 224, 224)
