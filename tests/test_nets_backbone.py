import numpy as np
import pytest
import torch
from helpers import refiner_net

from probcat.infer.detect import (
    decode,
    tile_features,
)
from probcat.nets.detection import DetectionNet


@pytest.mark.parametrize("stem", ["conv", "patchify"])
def test_receptive_field_covers_padded_tile_and_is_exact(stem):
    """Impulse test: a pixel influences a tile only within the stated receptive field."""
    torch.manual_seed(0)
    net = DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=2, stem=stem).eval()
    assert DetectionNet(stem=stem).receptive_field >= 53
    x = torch.zeros(1, 1, 125, 125, requires_grad=True)
    feats = net.features(x)
    feats[0, :, 12, 12].sum().backward()
    g = x.grad[0, 0].abs() > 0
    ys, xs = torch.nonzero(g, as_tuple=True)
    span = max(int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1)
    assert span <= net.receptive_field
    assert span >= net.receptive_field - 2 * net.tile_size


def test_for_inference_keeps_the_outputs():
    """Batch norms folded into their convolutions, channels-last weights: same features,
    heads and stamp outputs as the plain network in eval mode."""
    import copy

    from probcat.infer.detect import tile_image
    from probcat.nets.detection import for_inference

    net = refiner_net()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
    fast = for_inference(copy.deepcopy(net))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    img = np.random.default_rng(7).standard_normal((1, 40, 45)).astype(np.float32) * 3
    fa, fb = tile_features(net, img, 1.0), tile_features(fast, img, 1.0)
    assert torch.allclose(fa, fb, atol=1e-4)
    pixels = tile_image(net, img, 1.0)
    a = decode(net, fa, image=pixels, threshold=0.3)
    b = decode(fast, fa, image=pixels, threshold=0.3)
    assert torch.equal(a.n, b.n) and a.n.any()
    assert torch.allclose(a.locs, b.locs, atol=1e-5)
    assert torch.allclose(
        a.conditional.galaxy_logit, b.conditional.galaxy_logit, atol=1e-4, equal_nan=True
    )


@pytest.mark.parametrize("stem", ["conv", "patchify"])
@pytest.mark.parametrize("fast", [False, True])
def test_valid_features_equal_the_padded_ones_inside_the_halo(stem, fast):
    """Unpadded tile-grid convolutions give, on the tiles ``feature_halo`` in from each side,
    exactly the padded computation's features (BN folded and in-place activations too)."""
    from probcat.nets.detection import for_inference

    torch.manual_seed(3)
    net = DetectionNet(n_bands=1, stem_channels=4, channels=8, n_blocks=2, stem=stem).eval()
    if fast:
        net = for_inference(net)
    img = torch.randn(2, 1, 100, 95) * 3
    h = net.feature_halo
    assert h >= 1
    with torch.no_grad():
        full, valid = net.features(img), net.features(img, valid=True)
    assert valid.shape == (2, 8, 20 - 2 * h, 19 - 2 * h)
    assert torch.allclose(valid, full[..., h:-h, h:-h], atol=1e-5)
    # the halo is no larger than needed: with more sky around the image, the features of
    # the tiles ``h`` in from its edge stay the same and those ``h - 1`` in change
    big = torch.randn(2, 1, 100 + 20, 95 + 20) * 3
    big[..., 10:-10, 10:-10] = img
    with torch.no_grad():
        ctx = net.features(big)[..., 2:-2, 2:-2]
    assert torch.allclose(ctx[..., h:-h, h:-h], valid, atol=1e-5)
    # (through the weakest path of the receptive field: a small but real difference)
    assert (ctx[..., h - 1, h:-h] - full[..., h - 1, h:-h]).abs().max() > 1e-6
