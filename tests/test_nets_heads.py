import math

import pytest
import torch

from probcat.nets.detection import DetectionNet, tile_groups


def test_decided_proximity_hand_built():
    from probcat.nets.detection import decided_proximity

    nd = torch.zeros(1, 3, 3)
    locs = torch.zeros(1, 3, 3, 2)
    nd[0, 1, 1] = 1.0
    locs[0, 1, 1] = torch.tensor([0.99, 0.01])  # (x, y): the centre tile's top-right corner
    p = decided_proximity(nd, locs, 5, scales=(0.5,))[0, 0]
    # the tiles touching that corner (above, above-right, right) see it within 0.05 px
    for ty, tx in [(0, 1), (0, 2), (1, 2)]:
        assert p[ty, tx] > 0.99
    # 4.95 px from the left column and the bottom row: nothing
    assert p[:, 0].max() < 1e-10 and p[2].max() < 1e-10
    assert p[1, 1] == 0  # a tile does not see its own decision


def test_proximity_conditioning_reaches_diagonal_neighbours():
    """With the raw decision channels silenced, the proximity channels alone tell tile (1, 1)
    whether its diagonal neighbour's source sits on their shared corner."""
    torch.manual_seed(0)
    net = DetectionNet(n_bands=1, channels=8, n_blocks=1, stem="patchify", proximity=True).eval()
    assert net.detection_head.cond_in.in_channels == 6
    with torch.no_grad():
        net.detection_head.cond_in.weight[:, :4] = 0
    feats = torch.randn(1, 8, 4, 4)
    decided = (tile_groups(4, 4) == 0)[None]
    n = torch.zeros(1, 4, 4, dtype=torch.long)
    n[0, 0, 0] = 1
    near, far = torch.zeros(1, 4, 4, 2), torch.zeros(1, 4, 4, 2)
    near[0, 0, 0] = torch.tensor([0.99, 0.99])  # at the corner shared with tile (1, 1)
    far[0, 0, 0] = torch.tensor([0.01, 0.01])
    a = net.heads(feats, decided, n, near, classify=False).count_logit
    b = net.heads(feats, decided, n, far, classify=False).count_logit
    assert not torch.isclose(a[0, 1, 1], b[0, 1, 1])


@pytest.mark.parametrize("shape", [(6, 7), (7, 6), (5, 5)])
def test_trunk_on_one_parity_equals_the_full_trunk_there(shape):
    torch.manual_seed(0)
    net = DetectionNet(n_bands=1, channels=8, n_blocks=1, stem="patchify", proximity=True).eval()
    feats = torch.randn(2, 8, *shape)
    decided = torch.rand(2, *shape) < 0.5
    n = torch.rand(2, *shape) < 0.5
    locs = torch.rand(2, *shape, 2)
    with torch.no_grad():
        full = net.trunk(feats, decided, n, locs)
        for py in (0, 1):
            for px in (0, 1):
                part = net.trunk(feats, decided, n, locs, parity=(py, px))
                assert torch.allclose(part, full[:, :, py::2, px::2], atol=1e-5)


def test_decided_proximity_equals_brute_force():
    from probcat.nets.detection import decided_proximity

    g = torch.Generator().manual_seed(4)
    nd = (torch.rand(3, 5, 6, generator=g) < 0.4).float()
    locs = torch.rand(3, 5, 6, 2, generator=g)
    got = decided_proximity(nd, locs, 5, scales=(0.5, 1.5))
    want = torch.zeros_like(got)
    for b in range(3):
        for ty in range(5):
            for tx in range(6):
                for ny in range(max(ty - 1, 0), min(ty + 2, 5)):
                    for nx in range(max(tx - 1, 0), min(tx + 2, 6)):
                        if (ny, nx) == (ty, tx) or not nd[b, ny, nx]:
                            continue
                        # the source in this tile's units; its distance to the unit square
                        x = float(locs[b, ny, nx, 0]) + nx - tx
                        y = float(locs[b, ny, nx, 1]) + ny - ty
                        ex, ey = max(-x, 0.0, x - 1), max(-y, 0.0, y - 1)
                        d2 = (ex**2 + ey**2) * 25
                        for k, s in enumerate((0.5, 1.5)):
                            want[b, k, ty, tx] = max(want[b, k, ty, tx], math.exp(-d2 / (2 * s**2)))
    assert want.max() > 0.5 and (want == 0).any()
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("parity", [None, (0, 1), (1, 0)])
def test_trunk_with_nothing_decided_is_the_convolution_of_zeros(parity):
    torch.manual_seed(5)
    net = DetectionNet(n_bands=1, channels=8, n_blocks=1, stem="patchify", proximity=True).eval()
    feats = torch.randn(2, 8, 6, 7)
    none = torch.zeros(2, 6, 7, dtype=torch.bool)
    n, locs = torch.ones(2, 6, 7), torch.rand(2, 6, 7, 2)
    with torch.no_grad():
        want = net.detection_head.cond_mix(
            feats + net.detection_head.cond_in(torch.zeros(2, 6, 6, 7))
        )
        if parity is not None:
            want = want[:, :, parity[0] :: 2, parity[1] :: 2]
        for decided in (None, none):
            got = net.trunk(feats, decided, n, locs, parity=parity)
            assert torch.allclose(got, want, atol=1e-6)
