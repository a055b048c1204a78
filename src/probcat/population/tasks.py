"""The population chain's networks as tasks of the one training loop
(:mod:`probcat.train.loop`): each supplies its batches, loss and validation."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from probcat.population.detection import pixel_labels
from probcat.population.networks import (
    DetectionNet,
    MapRatioNet,
    SensitivityNet,
    SetRatioNet,
    nre_loss,
)
from probcat.population.simulator import MAP_SIZE, normalise_theta, simulate
from probcat.train.loop import Phase

__all__ = ["R1Task", "R2Task", "MapRatioTask", "HeadTask", "SetRatioTask", "R1_HALO"]

R1_HALO = 16  # the detection network's reach in pixels (receptive field 33 px)


class _Task:
    """What the population tasks share: one phase, a validation batch, no post-training
    fits, the trained model kept on ``self.model``."""

    kind = "population"

    def __init__(self, name: str, steps: int, lr: float, seed: int):
        self.kind = f"population_{name}"
        self.steps, self.lr, self.seed = steps, lr, seed
        self.model = None
        self._val = None

    def phases(self):
        return [Phase("main", self.steps, self.lr, warmup=min(100, max(self.steps // 10, 1)))]

    def validate(self, model):
        if self._val is None:
            self._val = self.batch(np.random.default_rng([self.seed, 777]))
        return {"total": float(self.loss(model, self._val, 0, torch.Generator())["total"])}

    def finish(self, model, progress):
        self.model = model
        return {}

    def weights(self, model):
        return {
            "kind": self.kind,
            "hparams": model.hparams,
            "state_dict": model.state_dict(),
            "survey": None,
        }


def crop_batch(maps: np.ndarray, labels: np.ndarray, rng, crop: int):
    """A ``crop``-px window of the maps zero-padded by :data:`R1_HALO` (the same window for
    the batch), and the labels of its central ``crop - 2 halo`` pixels, which lie inside
    the map and see only real context."""
    core = crop - 2 * R1_HALO
    y0 = int(rng.integers(0, MAP_SIZE - core + 1))
    x0 = int(rng.integers(0, MAP_SIZE - core + 1))
    pad = np.pad(maps, ((0, 0), (R1_HALO, R1_HALO), (R1_HALO, R1_HALO)))
    win = pad[:, y0 : y0 + crop, x0 : x0 + crop]
    lab = labels[:, :, y0 : y0 + core, x0 : x0 + core]
    return win, lab, y0 - R1_HALO, x0 - R1_HALO


class R1Task(_Task):
    """r1: per-pixel, per-threshold classifier on fresh full-model maps (windows)."""

    def __init__(self, steps, lr, seed, batch: int, crop: int, channels: int):
        super().__init__("r1", steps, lr, seed)
        self.batch_size, self.crop, self.channels = batch, crop, channels
        self.n_simulations = steps * batch

    def build_model(self):
        return DetectionNet(channels=self.channels)

    def batch(self, rng):
        _, maps, src = simulate(rng, self.batch_size)
        win, lab, y0, x0 = crop_batch(maps, pixel_labels(src, len(maps)), rng, self.crop)
        return torch.from_numpy(win), torch.from_numpy(lab).float(), y0, x0

    def loss(self, model, batch, phase, gen):
        win, lab, y0, x0 = batch
        h = R1_HALO
        logit = model(win, y0, x0)[:, :, h : win.shape[1] - h, h : win.shape[2] - h]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, lab)
        return {"total": loss}

    def describe_data(self):
        return {
            "train": f"fresh full-model maps, {self.batch_size} per step ({self.crop}-px windows)"
        }


class R2Task(_Task):
    """r2: the sensitivity function from the pool's sources and their detection labels."""

    def __init__(self, steps, lr, seed, feats: np.ndarray, labels: np.ndarray, batch: int):
        super().__init__("r2", steps, lr, seed)
        self.feats, self.labels, self.batch_size = feats, labels, batch

    def build_model(self):
        return SensitivityNet()

    def batch(self, rng):
        i = rng.integers(0, len(self.labels), self.batch_size)
        return torch.from_numpy(self.feats[i]), torch.from_numpy(self.labels[i]).float()

    def loss(self, model, batch, phase, gen):
        x, y = batch
        return {"total": torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)}

    def describe_data(self):
        return {"train": f"{len(self.labels)} sources of the pool maps, labelled by r1"}


def _shuffled(theta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``theta`` rolled by a random non-zero shift: each row paired with another map's."""
    shift = int(torch.randint(1, len(theta), (1,), generator=gen)) if len(theta) > 1 else 0
    return torch.roll(theta, shift, 0)


def pair_loss(head, emb, theta, gen, balance: float) -> torch.Tensor:
    """The NRE loss of ``head`` on the joint pairs ``(emb_i, theta_i)`` and as many
    marginal ones (``theta`` rolled across the batch)."""
    return nre_loss(head(emb, theta), head(emb, _shuffled(theta, gen)), balance)


class MapRatioTask(_Task):
    """r3 (targeted maps) or the plain NRE (full-model maps): ``log r(theta; x)`` by NRE on
    fresh simulations from ``simulator(rng, n) -> (theta, maps, sources)``; ``init``: the
    state of a network to start from (a later truncation round continues the last)."""

    def __init__(self, name, steps, lr, seed, simulator: Callable, batch: int, balance: float,
                 init: dict | None = None):  # fmt: skip
        super().__init__(name, steps, lr, seed)
        self.simulator, self.batch_size, self.balance = simulator, batch, balance
        self.n_simulations = steps * batch
        self.init = init

    def build_model(self):
        net = MapRatioNet()
        if self.init is not None:
            net.load_state_dict(self.init)
        return net

    def batch(self, rng):
        theta, maps, _ = self.simulator(rng, self.batch_size)
        return torch.from_numpy(maps), torch.from_numpy(normalise_theta(theta)).float()

    def loss(self, model, batch, phase, gen):
        maps, theta = batch
        return {"total": pair_loss(model.head, model.embedding(maps), theta, gen, self.balance)}

    def describe_data(self):
        return {"train": f"fresh simulations, {self.batch_size} per step"}


class HeadTask(_Task):
    """The second stage of a map ratio estimator: its head alone, by NRE, on the frozen
    embeddings of a bank of ``n_maps`` fresh simulations (``bank()`` gives the embeddings
    ``(n, E)`` and parameters ``theta`` ``(n, 3)``; called only when a step needs it, so a
    finished run resumes without drawing it), starting from the jointly trained head
    ``head``.

    Training the whole network costs a convolution pass per map and step; the head alone
    costs almost nothing, so it can take the many more steps that sharp ratios need. A
    jointly trained head stopped early is too flat: posteriors too wide (expected coverage
    0.82-0.85 at 68.3%, as measured before this stage existed); the embedding need not be
    optimal for the posteriors to be calibrated, only the head given it.
    """

    def __init__(self, name, steps, lr, seed, head, bank: Callable, n_maps: int, batch, balance):
        super().__init__(f"{name}_head", steps, lr, seed)
        self.head, self.n_maps = head, n_maps
        self._bank, self._data = bank, None  # drawn on the first step (none if resumed done)
        self.batch_size, self.balance = batch, balance

    def build_model(self):
        return copy.deepcopy(self.head)

    def batch(self, rng):
        if self._data is None:
            emb, theta = self._bank()
            self._data = torch.as_tensor(emb), torch.from_numpy(normalise_theta(theta)).float()
        emb, theta = self._data
        i = torch.from_numpy(rng.integers(0, len(theta), self.batch_size))
        return emb[i], theta[i]

    def loss(self, model, batch, phase, gen):
        emb, theta = batch
        return {"total": pair_loss(model, emb, theta, gen, self.balance)}

    def weights(self, model):
        return {"kind": self.kind, "hparams": {}, "state_dict": model.state_dict(), "survey": None}

    def describe_data(self):
        return {"train": f"frozen embeddings of {self.n_maps} fresh simulations"}


class SetRatioTask(_Task):
    """r4: ``log r(theta; S_det)`` by NRE on the pool's detected-source lists. Each batch
    flips the sign of ``l`` and of ``b`` of its lists at random: the model is symmetric
    under both (``l ~ N(0, 20)``, ``b ~ N(0, h)`` on a map centred on the origin), which
    gives the pool four times the lists."""

    def __init__(self, steps, lr, seed, theta, lists: list[np.ndarray], batch: int, balance):
        super().__init__("r4", steps, lr, seed)
        self.theta, self.lists = theta, lists
        self.batch_size, self.balance = batch, balance

    def build_model(self):
        return SetRatioNet()

    def batch(self, rng):
        i = rng.integers(0, len(self.lists), self.batch_size)
        feats, mask = pad_lists([self.lists[j] for j in i])
        signs = rng.choice(np.array([-1.0, 1.0], np.float32), (len(i), 1, 2))
        feats[..., 1:] *= torch.from_numpy(signs)
        return feats, mask, torch.from_numpy(normalise_theta(self.theta[i])).float()

    def loss(self, model, batch, phase, gen):
        feats, mask, theta = batch
        emb = model.embedding(feats, mask)
        return {"total": pair_loss(model.head, emb, theta, gen, self.balance)}

    def describe_data(self):
        return {"train": f"detected-source lists of {len(self.lists)} pool maps"}


def pad_lists(lists: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Source lists ``(n_i, 3)`` as a padded batch ``(B, M, 3)`` and its mask ``(B, M)``."""
    m = max(1, max(len(a) for a in lists))
    feats = np.zeros((len(lists), m, 3), np.float32)
    mask = np.zeros((len(lists), m), bool)
    for i, a in enumerate(lists):
        feats[i, : len(a)] = a
        mask[i, : len(a)] = True
    return torch.from_numpy(feats), torch.from_numpy(mask)
