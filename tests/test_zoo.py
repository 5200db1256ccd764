"""The model zoo: published multiply-accumulate counts and valid tables at any input size."""

import pytest

from jaxsplit import zoo
from jaxsplit.layers import total_macs


@pytest.mark.parametrize("name", sorted(zoo.PUBLISHED_MACS))
def test_published_macs_within_3_percent(name):
    macs = total_macs(zoo.get(name, (224, 224)))
    assert abs(macs / zoo.PUBLISHED_MACS[name] - 1) < 0.03


#: models whose every layer reads the output of the layer before it (no branches)
SEQUENTIAL = ("vgg16", "alexnet", "yolov2_tiny")


@pytest.mark.parametrize("name", zoo.names())
@pytest.mark.parametrize("size", [(224, 224), (96, 128), (320, 240)])
def test_tables_are_chained(name, size):
    """Each layer reads a tensor that exists: the image or the output of an earlier layer (its
    previous one for a model without branches). The first linear layer reads the last feature map,
    flattened as it is or after the torchvision heads' adaptive average pool (to 1x1, 6x6 or 7x7);
    each later one, the linear layer before it."""
    layers = zoo.get(name, size)
    assert all(l.out_height >= 1 and l.out_width >= 1 for l in layers)
    shapes = [(3, *size)]  # every (C, H, W) produced so far, the image first
    features = set()  # every vector length a linear layer could read
    for layer in layers:
        if layer.kind == "linear":
            assert layer.in_channels in features, (layer.name, layer.in_channels)
            features = {layer.out_channels}
            continue
        shape = (layer.in_channels, layer.in_height, layer.in_width)
        assert shape == shapes[-1] if name in SEQUENTIAL else shape in shapes, (layer.name, shape)
        shapes.append(layer.output_shape)
        c, h, w = layer.output_shape
        features = {c * h * w, c, c * 36, c * 49}
def test_resnet_downsample_shape():
    layers = {l.name: l for l in zoo.get("resnet18")}
    ds = layers["layer2.0.downsample.0"]
    assert (ds.kernel, ds.stride, ds.in_channels, ds.out_channels) == ((1, 1), (2, 2), 64, 128)
    assert ds.output_shape == layers["layer2.0.conv2"].output_shape


def test_unknown_model_and_tiny_input():
    with pytest.raises(ValueError, match="model"):
        zoo.get("vgg17")
    with pytest.raises(ValueError, match="input_size"):
        zoo.get("vgg16", (8, 8))
    with pytest.raises(ValueError, match="input_size"):
        zoo.get("vgg16", (0, 224))
