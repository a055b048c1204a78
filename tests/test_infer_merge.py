import numpy as np
import pytest
import torch
from helpers import stamp_net_with

from probcat.infer.detect import (
    decode,
    tile_features,
)
from probcat.nets.detection import tile_groups


def _neighbour_pairs(ty, tx):
    """Index pairs ``(i, j)``, ``i < j``, of sources in 8-neighbouring tiles."""
    i, j = np.triu_indices(len(ty), 1)
    near = (np.abs(ty[i] - ty[j]) <= 1) & (np.abs(tx[i] - tx[j]) <= 1)
    return i[near], j[near]


def _close_neighbour_pairs(dec, k, radius_px, t=5):
    """Pairs of sources of sample ``k`` in 8-neighbouring tiles whose conditioning
    positions lie closer than ``radius_px``."""
    ty, tx = (v.numpy() for v in torch.nonzero(dec.n[k], as_tuple=True))
    at = (np.stack([tx, ty], 1) + dec.cond_locs[k, ty, tx].numpy()) * t
    i, j = _neighbour_pairs(ty, tx)
    return int(np.sum(np.hypot(*(at[i] - at[j]).T) < radius_px))


@pytest.mark.parametrize("refine", [False, True])
def test_decode_merges_claims_of_neighbouring_tiles(refine):
    """With a merge radius no two neighbouring tiles hold sources closer than it (there are
    such pairs without); a radius beyond any neighbour's reach keeps the first group only."""
    from probcat.infer.detect import tile_image

    net = stamp_net_with(refine)
    img = np.random.default_rng(4).standard_normal((1, 40, 45)).astype(np.float32) * 3
    feats, pixels = tile_features(net, img, 1.0), tile_image(net, img, 1.0)
    kw = dict(image=pixels, n_samples=6, sweeps=2)
    plain = decode(net, feats, merge_px=0.0, generator=torch.Generator().manual_seed(1), **kw)
    assert sum(_close_neighbour_pairs(plain, k, 2.5) for k in range(6)) > 0
    merged = decode(net, feats, merge_px=2.5, generator=torch.Generator().manual_seed(1), **kw)
    assert sum(_close_neighbour_pairs(merged, k, 2.5) for k in range(6)) == 0
    assert merged.n.sum() < plain.n.sum()
    if refine:
        assert not torch.equal(merged.cond_locs[merged.n], merged.locs[merged.n])
    # the weights' radius is the default
    net.merge_px = 2.5
    again = decode(net, feats, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(again.n, merged.n)
    net.merge_px = 0.0
    groups = tile_groups(*feats.shape[-2:])
    first = decode(net, feats, image=pixels, threshold=0.0, merge_px=20.0)
    assert torch.equal(first.n[0], groups == 0)


def test_merge_rule_round_trips_and_f1_from_counts():
    from probcat.infer.merge import RADII, MergeRule, _f1

    # 8 matched of 10 estimated, 16 true: P 0.8, R 0.5
    assert _f1(np.array([8, 10, 16])) == pytest.approx(2 * 0.8 * 0.5 / 1.3)
    assert _f1(np.zeros(3)) == 0.0
    rule = MergeRule(1.5, RADII, (0.1,) * len(RADII), (0.2,) * len(RADII), 3, "x")
    assert MergeRule.from_dict(rule.to_dict()) == rule
