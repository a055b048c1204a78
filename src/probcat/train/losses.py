"""FAVI loss of paper 000 eq. 10 on tile catalogs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from probcat.nets.heads import TileOutput
from probcat.tiles import TileCatalog

__all__ = ["favi_detection_loss"]


def favi_detection_loss(
    out: TileOutput,
    truth: TileCatalog,
    mask: torch.Tensor | None = None,
    type_term: bool = True,
) -> dict[str, torch.Tensor]:
    """Negative log-likelihood of the true tile catalog under the variational distribution.

    ``-[log Q(n_t) + n_t log Q(l_t | n_t) + n_t log Q(b_t | n_t, l_t)]`` summed over tiles and
    averaged over images (eq. 10). Tiles without a source only contribute the count term
    (footnote 13). ``mask`` ``(B, nty, ntx)`` restricts the count and location terms to the
    tiles being inferred (the undecided ones in checkerboard training); the type term uses
    every tile with a source. The location density is the normal truncated to the tile.
    ``type_term=False`` leaves the type term out (zero). Returns the total and its parts.
    """
    n = truth.n_sources.float()
    m = torch.ones_like(n) if mask is None else mask.float()
    count_nll = F.binary_cross_entropy_with_logits(out.count_logit, n, reduction="none") * m
    has = n > 0
    # locations: normal truncated to the tile (probcat.nets.distributions)
    loc_nll = torch.where(has, -out.loc_log_prob(truth.locs.clamp(0, 1)), 0.0) * m
    galaxy = truth.params["galaxy"][..., 0] if "galaxy" in truth.params else torch.zeros_like(n)
    logit = torch.where(has, out.galaxy_logit, 0.0)  # NaN where a classifier did not run
    type_nll = torch.where(
        has & type_term, F.binary_cross_entropy_with_logits(logit, galaxy, reduction="none"), 0.0
    )
    b = n.shape[0]
    parts = {"count": count_nll.sum() / b, "loc": loc_nll.sum() / b, "type": type_nll.sum() / b}
    parts["total"] = parts["count"] + parts["loc"] + parts["type"]
    return parts
