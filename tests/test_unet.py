"""The U-Net backbone."""

import pytest
import torch

from cbdm_core.errors import CbdmError
from cbdm_core.nets.unet import UNet, UNetOptions

from .helpers import tiny_unet


def test_paper_config_parameter_count():
    # DDPM CIFAR U-Net (35.75M) plus a 512-d embedding for each of 100 classes and the null row.
    model = UNet(UNetOptions(), image_size=32, channels=3, num_classes=100)
    n = sum(p.numel() for p in model.parameters())
    assert n == 35_798_019


@pytest.mark.parametrize("channels,size", [(1, 8), (3, 16), (1, 32)])
def test_shapes(channels, size):
    model = tiny_unet(channels=channels, image_size=size)
    x = torch.randn(2, channels, size, size)
    assert model(x, torch.tensor([0, 999]), torch.tensor([0, 3])).shape == x.shape


def test_null_label_embedding_is_zero_and_frozen():
    model = tiny_unet(num_classes=3)
    null = model.num_classes
    assert torch.count_nonzero(model.label_embedding.weight[null]) == 0
    x = torch.randn(4, 1, 8, 8)
    out = model(x, torch.tensor([5, 5, 5, 5]), torch.tensor([0, 1, 2, null]))
    out.pow(2).sum().backward()
    grad = model.label_embedding.weight.grad
    assert torch.count_nonzero(grad[null]) == 0 and torch.count_nonzero(grad[:null]) > 0
    # Null row = no class embedding at all.
    with torch.no_grad():
        a = model(x[:1], torch.tensor([5]), torch.tensor([null]))
        b = model(x[:1], torch.tensor([5]), None)
    assert torch.allclose(a, b)


def test_class_label_changes_output():
    model = tiny_unet()
    torch.nn.init.normal_(model.label_embedding.weight[:3])
    torch.nn.init.normal_(model.tail[-1].weight)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        a = model(x, torch.tensor([10]), torch.tensor([0]))
        b = model(x, torch.tensor([10]), torch.tensor([1]))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("kwargs,size,match", [
    ({"attn": [3]}, 8, "attn levels"),
    ({"ch_mult": [1, 2, 2, 2]}, 12, "not divisible"),
    ({"ch": 12, "num_groups": 8}, 8, "num_groups"),
])
def test_bad_options(kwargs, size, match):
    opts = UNetOptions(**{"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_groups": 4, **kwargs})
    with pytest.raises(CbdmError, match=match):
        UNet(opts, image_size=size, channels=1, num_classes=2)
