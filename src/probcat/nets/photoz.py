"""Photo-z mixture density network (paper 002 section 3).

A multi-band stamp centred on a detected object (noise-sigma units, every band) goes
through the same convolutional encoder as the galaxy autoencoder
(:class:`~probcat.nets.deblend.GalaxyEncoder`: ``asinh`` input, strided convolutions, a
small MLP), whose 15 outputs parametrise a 5-component Gaussian mixture for the
redshift: weights (softmax), means and log standard deviations, as in the paper.

**Aperture photometry.** ``asinh`` keeps faint wings and bright cores on one scale, but
it is a logarithm in a galaxy's core, and a sum of logarithms of pixels is not the
logarithm of their sum: the convolutions cannot add up a colour with the precision of a
matched filter. With ``apertures`` (Gaussian widths in pixels) the net also reads, per
band and aperture, the matched-filter signal-to-noise of the centred Gaussian,
``sum(w x) / sqrt(sum(w^2))`` on the linear stamp, through ``asinh`` (a softened
magnitude, so differences between bands are colours), joined to the convolutional
features at the MLP's input (:func:`aperture_features`).

**Auxiliary outputs.** With ``aux`` > 0 a single net has a linear head of that many
outputs beside the mixture's, on the same last hidden layer, which training can regress on
other properties of the galaxy (its noise-free colours and i magnitude: ``model.colour_aux``
of a photo-z config); inference reads the mixture only, and ensembles leave the head out.
The encoder is initialised as without the head (the head draws from a generator of its
own), so a run with the head and one without start from the same mixture network.

**Keeping z >= 0.** The density is the mixture *truncated at z = 0 and renormalised*:

    p(z) = sum_k w_k N(z; mu_k, sigma_k) / sum_k w_k Phi(mu_k / sigma_k),   z >= 0,

and the loss is its negative log likelihood (:func:`mixture_nll`), so the network is
never rewarded for mass at negative redshift. The stored components (``qp.mixmod``) are
the untruncated ones; every summary probcat reports (mode, median, mean, intervals,
PIT) uses the truncated density (see :mod:`probcat.redshift`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from probcat.nets.deblend import GalaxyEncoder

__all__ = [
    "PhotozNet",
    "mixture_nll",
    "fit_sd_scale",
    "COMPONENTS",
    "STAMP_Z",
    "LOG_SD_RANGE",
    "SD_SCALES",
    "HEAD",
    "aperture_kernels",
    "aperture_features",
    "dihedral",
    "SYMMETRIES",
]

COMPONENTS = 5
STAMP_Z = 33  # stamp side in pixels (6.6" for LSST): the object and its near neighbours
LOG_SD_RANGE = (math.log(0.003), math.log(1.0))
SYMMETRIES = (1, 2, 4, 8)  # orientations a net can pool (see PhotozNet)
HEAD = (128,)  # hidden widths of the MLP between the features and the mixture
SD_SCALES = np.exp(np.linspace(np.log(0.5), np.log(3.0), 61))


def aperture_kernels(size: int, sigmas) -> torch.Tensor:
    """``(A, size, size)`` Gaussian weights of widths ``sigmas`` (pixels) centred on the
    stamp's middle pixel, each scaled to unit sum of squares (so ``sum(w x)`` of a stamp in
    noise-sigma units is the aperture's signal-to-noise in white noise)."""
    r = torch.arange(size, dtype=torch.float64) - size // 2
    r2 = r[:, None] ** 2 + r[None, :] ** 2
    k = torch.stack([torch.exp(-0.5 * r2 / float(s) ** 2) for s in sigmas])
    return (k / k.square().sum((1, 2), keepdim=True).sqrt()).float()


def aperture_features(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """``asinh`` of the aperture signal-to-noise per band and aperture: ``(B, bands x A)``
    from stamps ``(B, bands, S, S)`` in noise-sigma units and ``kernels`` ``(A, S, S)``."""
    return torch.asinh(torch.einsum("bcij,aij->bca", x, kernels)).flatten(1)


class PhotozNet(nn.Module):
    """``(B, bands, S, S)`` stamps in noise-sigma units → mixture ``(weights, means, sds)``,
    each ``(B, n_components)``. The buffer ``sd_scale`` (1 after training) multiplies every
    standard deviation: a post-hoc width calibration fitted on validation detections.

    With ``members > 1`` the net is a deep ensemble: ``members`` encoders trained
    independently (other seeds, other training stamps), whose mixtures are pooled with
    equal weight, so the PDF is a mixture of ``members x components`` Gaussians.

    ``apertures``: Gaussian aperture widths (pixels) whose photometry joins the
    convolutional features (:func:`aperture_features`); none by default. ``head``: the
    widths of the hidden layers of the MLP that maps the features to the mixture.

    ``symmetries`` (1, 2, 4 or 8): the stamp is read in that many orientations (the first
    of identity, rotations by 90°, 180°, 270°, then the same flipped: the symmetries the
    nets are trained with) and the mixtures are pooled with equal weight. The sky has no
    preferred orientation, so each orientation is an equally valid reading of the same
    stamp; pooling them averages out the net's orientation-dependent errors, as the
    ensemble averages out the members' (a mixture of ``members x symmetries x
    components`` Gaussians, at ``symmetries`` times the cost)."""

    def __init__(
        self,
        bands: int = 6,
        size: int = STAMP_Z,
        channels: int = 32,
        components: int = COMPONENTS,
        members: int = 1,
        apertures: tuple[float, ...] | list[float] = (),
        symmetries: int = 1,
        head: tuple[int, ...] | list[int] = HEAD,
        aux: int = 0,
    ):
        super().__init__()
        self.hparams = {
            "bands": bands,
            "size": size,
            "channels": channels,
            "components": components,
        }
        apertures = [float(a) for a in apertures]
        if not all(math.isfinite(a) and a > 0 for a in apertures):
            raise ValueError(f"aperture widths must be positive, got {apertures}")
        if apertures:  # nets without them keep their hparams as before
            self.hparams["apertures"] = apertures
        head = tuple(int(h) for h in head)
        if not head or min(head) < 1:
            raise ValueError(f"head must be one or more positive layer widths, got {head}")
        if head != HEAD:  # nets with the default head keep their hparams as before
            self.hparams["head"] = list(head)
        if isinstance(aux, bool) or int(aux) != aux or aux < 0 or (aux and members != 1):
            raise ValueError(f"aux must be a whole number >= 0, and 0 for ensembles, got {aux}")
        extra = bands * len(apertures)

        def encoder():
            return GalaxyEncoder(size, bands, 3 * components, channels, extra, head)

        if members != 1:  # single nets keep their hparams (and state) as before ensembles
            self.hparams["members"] = members
            self.encoders = nn.ModuleList(encoder() for _ in range(members))
        else:
            self.encoder = encoder()
        if aux:  # nets without auxiliary outputs keep their hparams (and state) as before
            self.hparams["aux"] = int(aux)
            state = torch.get_rng_state()  # the global stream as without the head
            self.aux_head = nn.Linear(head[-1], int(aux))
            torch.set_rng_state(state)
            g = torch.Generator().manual_seed(20461)
            bound = 1.0 / math.sqrt(head[-1])  # nn.Linear's default range
            with torch.no_grad():
                self.aux_head.weight.uniform_(-bound, bound, generator=g)
                self.aux_head.bias.uniform_(-bound, bound, generator=g)
        self.components, self.members = components, members
        self.symmetries = symmetries
        self.register_buffer("sd_scale", torch.ones(()))
        # derived from the hparams, so not in the state dict
        kernels = aperture_kernels(size, apertures) if apertures else torch.zeros(0)
        self.register_buffer("aperture_kernels", kernels, persistent=False)

    @property
    def symmetries(self) -> int:
        """Orientations of the stamp pooled at inference (see the class docs)."""
        return self._symmetries

    @symmetries.setter
    def symmetries(self, k: int) -> None:
        if k not in SYMMETRIES:
            raise ValueError(f"symmetries must be one of {SYMMETRIES}, got {k}")
        self._symmetries = int(k)
        self.hparams.pop("symmetries", None)
        if k != 1:  # nets read in one orientation keep their hparams as before
            self.hparams["symmetries"] = int(k)

    @property
    def architecture(self) -> dict:
        """The hparams of one member's mixture network: without ``members``, ``symmetries``
        (how it is read) and ``aux`` (a training head), what nets must share to be pooled
        or to start one another."""
        return {k: v for k, v in self.hparams.items() if k not in ("members", "symmetries", "aux")}

    @property
    def n_components(self) -> int:
        return self.components * self.members * self.symmetries

    def _mixture(self, out: torch.Tensor):
        k = self.components
        weights = torch.softmax(out[:, :k], dim=1)
        means = out[:, k : 2 * k]
        lo, hi = LOG_SD_RANGE
        log_sd = lo + (hi - lo) * torch.sigmoid(out[:, 2 * k : 3 * k])
        return weights, means, log_sd.exp()

    def forward_aux(self, x: torch.Tensor):
        """A single net with auxiliary outputs: its mixture in the stamp's own orientation
        and the head's outputs ``(B, aux)``, ``(weights, means, sds, aux)``, for training."""
        if not self.hparams.get("aux"):
            raise ValueError("forward_aux needs a net with auxiliary outputs (aux > 0)")
        feats = None
        if self.hparams.get("apertures"):
            feats = aperture_features(x, self.aperture_kernels)
        hidden = self.encoder.last_hidden(torch.asinh(x), feats)
        w, m, sd = self._mixture(self.encoder.fc[-1](hidden))
        return w, m, sd * self.sd_scale, self.aux_head(hidden)

    def forward(self, x: torch.Tensor):
        feats = None  # the apertures are centred Gaussians: the same in every orientation
        if self.hparams.get("apertures"):
            feats = aperture_features(x, self.aperture_kernels)
        xa = torch.asinh(x)  # once for every member and orientation
        encoders = self.encoders if self.members != 1 else [self.encoder]
        parts = [
            self._mixture(enc.from_asinh(dihedral(xa, v), feats))
            for v in range(self.symmetries)
            for enc in encoders
        ]
        w, m, sd = (torch.cat([p[j] for p in parts], dim=1) for j in range(3))
        return w / len(parts), m, sd * self.sd_scale

    @classmethod
    def ensemble(cls, nets: list[PhotozNet], symmetries: int = 1) -> PhotozNet:
        """The deep ensemble of single nets of one architecture, read in ``symmetries``
        orientations (``sd_scale`` 1: refit it; auxiliary heads left out)."""
        hp, sym = nets[0].architecture, nets[0].symmetries
        if any(n.members != 1 or n.architecture != hp or n.symmetries != sym for n in nets):
            raise ValueError("ensemble members must be single nets of one architecture")
        out = cls(**hp, members=len(nets), symmetries=symmetries)
        for enc, net in zip(out.encoders, nets):
            enc.load_state_dict(net.encoder.state_dict())
        return out


def dihedral(x: torch.Tensor, v: int) -> torch.Tensor:
    """Symmetry ``v`` (0-7) of the dihedral group on the last two axes: a rotation by
    ``v % 4`` quarter turns, then a flip of the columns if ``v >= 4`` (as in training)."""
    t = torch.rot90(x, v % 4, dims=(-2, -1)) if v % 4 else x
    return t.flip(-1) if v >= 4 else t


def _log_norm_cdf(x: torch.Tensor) -> torch.Tensor:
    return torch.special.log_ndtr(x)


def mixture_nll(weights, means, sds, z, truncate: bool = True) -> torch.Tensor:
    """Per-object negative log density of ``z`` ``(B,)`` under the mixture, truncated to
    ``z >= 0`` (renormalised) when ``truncate``."""
    z = z[:, None]
    log_comp = -0.5 * ((z - means) / sds) ** 2 - torch.log(sds) - 0.5 * math.log(2 * math.pi)
    log_w = torch.log(weights.clamp_min(1e-12))
    log_p = torch.logsumexp(log_w + log_comp, dim=1)
    if truncate:
        log_p = log_p - torch.logsumexp(log_w + _log_norm_cdf(means / sds), dim=1)
    return -log_p


def fit_sd_scale(weights, means, sds, z, scales=SD_SCALES) -> float:
    """The factor on every mixture width (from the grid ``scales``) that minimises the mean
    truncated NLL of the true redshifts ``z``: a one-parameter recalibration."""
    w, m, s, zt = (
        torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in (weights, means, sds, z)
    )
    if len(zt) == 0:
        return 1.0
    nll = [float(mixture_nll(w, m, s * float(k), zt).mean()) for k in scales]
    return float(scales[int(np.argmin(nll))])
