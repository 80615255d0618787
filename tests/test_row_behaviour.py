"""Which networks repeat a row and keep rows apart (cbdm_core.nets.row_behaviour): what decides whether
the CPU trainer may leave a CBDM y' row with y' = y, or any row, out of the shared pass."""

import pytest
import torch
from timm.layers import DropPath
from torch import nn

from cbdm_core.nets.dropout import Dropout
from cbdm_core.nets.row_behaviour import has_active_random_layer, has_active_row_coupling

from .helpers import tiny_unet


@pytest.mark.parametrize("layer, random", [
    (nn.Dropout(0.1), True), (nn.Dropout(0.0), False), (nn.Dropout2d(0.2), True), (Dropout(0.1), True),
    (Dropout(0.0), False), (DropPath(0.1), True), (DropPath(0.0), False), (nn.Linear(2, 2), False),
])
def test_random_layers_are_recognised_in_training_mode_only(layer, random):
    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(layer))
    assert has_active_random_layer(net.train()) is random
    assert has_active_random_layer(net.eval()) is False


def test_a_plugin_layer_declares_itself_random():
    class Noisy(nn.Module):
        cbdm_random_in_training = True

        def forward(self, x):
            return x + torch.randn_like(x) if self.training else x

    assert has_active_random_layer(nn.Sequential(nn.Linear(2, 2), Noisy()))
    assert not has_active_random_layer(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))


def test_the_unet_is_random_exactly_when_its_dropout_is_on():
    assert not has_active_random_layer(tiny_unet(3, dropout=0.0).train())
    assert has_active_random_layer(tiny_unet(3, dropout=0.1).train())


@pytest.mark.parametrize("layer, coupled", [
    (nn.BatchNorm2d(4), True), (nn.BatchNorm1d(4), True), (nn.GroupNorm(2, 4), False), (nn.LayerNorm(4), False),
])
def test_batch_norm_couples_rows_while_it_trains(layer, coupled):
    net = nn.Sequential(nn.Identity(), layer)
    assert has_active_row_coupling(net.train()) is coupled
    assert has_active_row_coupling(net.eval()) is False


def test_a_plugin_layer_declares_that_it_couples_rows():
    class MixesRows(nn.Module):
        cbdm_couples_rows = True

        def forward(self, x):
            return x - x.mean(0, keepdim=True)

    assert has_active_row_coupling(nn.Sequential(MixesRows()))
