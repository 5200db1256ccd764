"""The model zoo: published multiply-accumulate counts and valid tables at any input size."""

import pytest

from jaxsplit import zoo
from jaxsplit.layers import total_macs


@pytest.mark.parametrize("name", sorted(zoo.PUBLISHED_MACS))
def test_published_macs_within_3_percent(name):
    macs = total_macs(zoo.get(name, (224, 224)))
    assert abs(macs / zoo.PUBLISHED_MACS[name] - 1) < 0.03


@pytest.mark.parametrize("name", zoo.names())
@pytest.mark.parametrize("size", [(224, 224), (96, 128), (320, 240)])
def test_tables_are_chained(name, size):
    layers = zoo.get(name, size)
    spatial = [l for l in layers if l.kind != "linear"]
    assert spatial[0].in_channels == 3 and (spatial[0].in_height, spatial[0].in_width) == size
    for layer in layers:
        assert layer.out_height >= 1 and layer.out_width >= 1


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
