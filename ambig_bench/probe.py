"""The head of a frozen run (`--freeze`), fitted to its optimum: a linear probe over cached features.

Standardised features (mean and std of the training split), the strategy's own targets (`epoch_targets`) and
loss (`Strategy.loss`) over the whole training split at once, plus an L2 penalty l2/2·|W|² on the weights (not
the bias), minimised by L-BFGS with a strong-Wolfe line search until the largest gradient entry falls below
`GRAD_TOLERANCE` (or the loss stops changing); `MAX_ITERATIONS` caps each fit. Not an epoch loop: the probe's
answer is the optimum, so it does not depend on --epochs, --lr, --optimizer, --schedule or --augment. Every loss
here is convex in the head's weights but `partial`'s candidate-set loss, whose fit is the local optimum reached
from zero weights.

The L2 strength comes from `L2_GRID`, the same grid for every strategy, chosen by `metrics.selection_loss` on the
validation split: the loss each strategy trains on is not comparable across strategies, the probability it gives
each image's label set is. The grid is walked from `L2_START` (each fit starting from the previous optimum):
towards weaker penalties while the validation loss falls, or, if the first step already raises it, towards
stronger ones; the walk stops at the first value that does not improve on the best (the selection loss along a
penalty path falls to one minimum and rises after it; weak penalties cost the most iterations). The rows of the
history are the values it fitted, in that order.

Strategies with random targets or inputs have no single full-batch loss:
- A strategy that redraws its targets (reassign) trains on their mean (`Strategy.mean_targets`). Its loss is
  linear in the targets (cross-entropy), so the loss of the mean targets is exactly the expected loss over draws:
  the full-batch optimum of what it trains on, with no sampling error (reassign's is soft's).
- A strategy that mixes images (mixup) has no such closed form: its loss is not linear in the mixed inputs. It
  is fitted on a sample average of `DRAWS` fixed draws of its own mixing, made with the run's generator: the
  standardised training set, shuffled, in chunks of `MIX_BATCH` rows that `mix_batch` mixes as it mixes a
  training batch (mixup: one λ and one pairing per chunk). That objective is deterministic, so L-BFGS converges
  on it as on any other; its optimum tends to the expected loss's as `DRAWS` grows (tests/test_probe.py
  measures how far two independent sets of draws end apart). Stochastic steps with a decaying step size were the
  alternative: they only approach the optimum at the rate of their step-size schedule, with no convergence test
  as sharp as a gradient's.

With more features than training images (1,280-d features of a few hundred photos) the fit runs in the span of
the standardised training features (an orthonormal basis from their QR decomposition): the loss's gradient and the
penalty's keep the weights in that span (each row of W is a combination of training rows at the optimum, mixes
included), and the penalty is the same there, so the optimum is the same, at a fraction of the work per iteration.

The standardisation is folded into the head's own Linear layer (weight / std, bias - weight·mean / std), so the
saved network, `predict` and the head over raw features compute the same logits.

>>> from ambig_bench.probe import L2_GRID
>>> L2_GRID[0], L2_GRID[3], L2_GRID[-1], len(L2_GRID)
(100.0, 3.16, 0.0001, 13)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ambig_bench.data import LabelledImages
from ambig_bench.metrics import selection_loss
from ambig_bench.strategies import Labels, Strategy
from ambig_bench.train import labels_of

L2_GRID = [float(f"{10 ** (2 - k / 2):.3g}") for k in range(13)]  # 100 .. 1e-4, half decades; per mean loss
L2_START = 1.0  # where the walk along the grid begins (sklearn's default C = 1 is L2 = 1/N, for N ~ 1e3: 1e-3)
GRAD_TOLERANCE = 1e-4  # largest |gradient| entry of the penalised mean loss at which a fit has converged
CHANGE_TOLERANCE = 1e-9  # L-BFGS also stops when the loss or the step changes by less (float32: no progress)
# Where the loss or the step stops changing in float32 before the gradient tolerance, the fit counts as converged
# only if its gradient is within 10x the tolerance (float32's resolution of a mean loss); beyond, it stalled.
STALL_TOLERANCE = 10 * GRAD_TOLERANCE
MAX_ITERATIONS = 500  # per L2 value: a fit that needs more has not converged (recorded as such)
DRAWS = 8  # passes of mixing over the training set that a mixing strategy's sample-average objective averages
MIX_BATCH = 64  # rows mixed together (one λ and one pairing each for mixup), as in a training batch
MIN_STD = 1e-6  # a feature constant over the training images is centred, not scaled


@dataclass
class Standardise:
    """Per-feature mean and std of the training split; z = (x - mean) / std."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, centre: bool = True) -> Standardise:
        """`centre=False` for a head without a bias, which cannot absorb the mean: features are only scaled."""
        std = x.std(0, unbiased=False)
        mean = x.mean(0) if centre else torch.zeros_like(std)
        return cls(mean, torch.where(std > MIN_STD, std, torch.ones_like(std)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass
class Rows:
    """A strategy's full-batch training objective: logits of `inputs` through the head, gathered by `index`,
    against `targets` (one row per index)."""

    inputs: torch.Tensor  # M×D standardised features
    index: torch.Tensor  # R: which input each target row is of
    targets: torch.Tensor  # R×outputs


def training_rows(strategy: Strategy, z: torch.Tensor, labels: Labels, gen: torch.Generator) -> Rows:
    """The strategy's own full-batch rows (see the module's docstring): its targets, their mean for a strategy that
    redraws them, `DRAWS` mixes of them for a strategy that mixes images."""
    index, targets = strategy.mean_targets(labels) if strategy.redraws_targets else strategy.epoch_targets(labels, gen)
    if not strategy.mixes_images:
        return Rows(z, index, targets)
    chunks = [chunk for _ in range(DRAWS)
              for chunk in torch.randperm(len(index), generator=gen, device=gen.device).split(MIX_BATCH)]
    mixed = [strategy.mix_batch(z[index[chunk]], targets[chunk], gen) for chunk in chunks]
    inputs = torch.cat([x for x, _ in mixed])
    return Rows(inputs, torch.arange(len(inputs), device=z.device), torch.cat([t for _, t in mixed]))


@dataclass
class Fit:
    """One L-BFGS fit at one L2 strength: where it ended and why."""

    l2: float
    weight: torch.Tensor  # outputs×D over standardised features
    bias: torch.Tensor | None  # None for a head without a bias
    iterations: int
    cap: int  # the iterations it was allowed
    train_loss: float  # the strategy's loss at the end, without the penalty
    gradient: float  # largest |entry| of the penalised loss's gradient at the end
    val_loss: float = float("nan")  # selection_loss on the validation split

    @property
    def converged(self) -> bool:
        """Stopped on a tolerance: the gradient's, or no more progress in float32 (the loss and step stopped
        changing); not on the iteration cap."""
        return self.gradient <= GRAD_TOLERANCE or (self.iterations < self.cap and self.gradient <= STALL_TOLERANCE)

    @property
    def convergence(self) -> str:
        if not self.converged:
            stop = f"hit its cap of {self.cap} iterations" if self.iterations >= self.cap else "stalled"
            return (f"L-BFGS {stop} at L2 {self.l2:g} with a gradient of {self.gradient:.1e} (tolerance "
                    f"{GRAD_TOLERANCE:g}): the probe is not at its optimum")
        test = "gradient" if self.gradient <= GRAD_TOLERANCE else "loss-change"
        return (f"L-BFGS stopped on its {test} tolerance after {self.iterations} iterations at L2 {self.l2:g} "
                f"(largest gradient {self.gradient:.1e})")


def lbfgs(strategy: Strategy, rows: Rows, l2: float, weight: torch.Tensor, bias: torch.Tensor | None,
          max_iterations: int = MAX_ITERATIONS) -> Fit:
    """Minimise strategy.loss(head(rows)) + l2/2·|W|² from (weight, bias)."""
    w = weight.clone().requires_grad_(True)
    b = bias.clone().requires_grad_(True) if bias is not None else torch.zeros(len(weight), device=weight.device)
    params = [w, b] if bias is not None else [w]
    optimizer = torch.optim.LBFGS(params, lr=1, max_iter=max_iterations, max_eval=4 * max_iterations,
                                  tolerance_grad=GRAD_TOLERANCE, tolerance_change=CHANGE_TOLERANCE, history_size=10,
                                  line_search_fn="strong_wolfe")

    def data_loss() -> torch.Tensor:
        return strategy.loss((rows.inputs @ w.T + b)[rows.index], rows.targets)  # b: zeros for a bias-free head

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = data_loss() + l2 / 2 * w.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    closure()  # the gradient where it ended
    gradient = max(p.grad.abs().max().item() for p in params)
    iterations = optimizer.state[w].get("n_iter", 0)
    with torch.no_grad():
        train_loss = data_loss().item()
    return Fit(l2, w.detach(), b.detach() if bias is not None else None, iterations, max_iterations, train_loss,
               gradient)


def logits_of(fit: Fit, z: torch.Tensor) -> torch.Tensor:
    """The fit's logits of standardised features."""
    return z @ fit.weight.T + (fit.bias if fit.bias is not None else 0)


def fit_head(head: nn.Linear, strategy: Strategy, inputs: LabelledImages, seed: int, device: torch.device,
             grid: list[float] = L2_GRID) -> list[dict] | str:
    """Fit `head` (in place) over the run's features `inputs` (N×D×1×1, every split) to the strategy's optimum at
    the L2 strength of `grid` that selection_loss prefers on validation. Returns the history of the walk down the
    grid, one row per L2 value fitted (`epoch` numbers them, for the readers of history.csv), whose last row says
    whether the chosen fit converged (`converged`, `convergence`) and what it chose (`probe_l2`,
    `probe_iterations`); or why it failed, as `train.train` does."""
    if not torch.isfinite(inputs.images).all():
        return "the backbone's features of some images are not finite (inf or nan): check its weights"
    train, val = inputs.subset("train"), inputs.subset("val")
    x = train.images.flatten(1).float().to(device)
    scale = Standardise.fit(x, centre=head.bias is not None)
    z = scale(x)
    # Weights in the span of the training features (see the module's docstring): W = W_span @ basis.T.
    basis = torch.linalg.qr(z.T).Q if z.shape[1] > z.shape[0] else torch.eye(z.shape[1], device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = training_rows(strategy, z @ basis, labels_of(train, device), gen)
    val_z = scale(val.images.flatten(1).float().to(device)) @ basis
    weight = torch.zeros(strategy.num_outputs, basis.shape[1], device=device)
    bias = torch.zeros(strategy.num_outputs, device=device) if head.bias is not None else None
    fits: list[Fit] = []

    def fit_at(i: int, start: Fit | None) -> Fit:
        fit = lbfgs(strategy, rows, grid[i], start.weight if start else weight, start.bias if start else bias)
        with torch.no_grad():
            probs = strategy.class_probs(logits_of(fit, val_z)).cpu()
        fit.val_loss = selection_loss(probs, val.label_a, val.label_b)
        fits.append(fit)
        return fit

    first = min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / L2_START)))
    best = fit_at(first, None)
    for step in (1, -1):  # grid index + 1: a weaker penalty
        i, last = first + step, best
        while 0 <= i < len(grid) and math.isfinite(last.train_loss):
            last = fit_at(i, last)
            if not last.val_loss < best.val_loss:
                break
            best, i = last, i + step
        if best is not fits[0]:
            break  # weaker penalties improved on the first: no need to try stronger ones
    if failed := next((f for f in fits if not math.isfinite(f.train_loss)), None):
        return f"the probe's training loss became {failed.train_loss} at L2 {failed.l2:g}"
    with torch.no_grad():
        head.weight.copy_(best.weight @ basis.T / scale.std)
        if head.bias is not None:
            head.bias.copy_(best.bias - head.weight @ scale.mean)
    history = [{"epoch": i + 1, "l2": f.l2, "iterations": f.iterations, "train_loss": f.train_loss,
                "val_loss": f.val_loss} for i, f in enumerate(fits)]
    history[-1].update(converged=best.converged, convergence=best.convergence, probe_l2=best.l2,
                       probe_iterations=best.iterations)
    return history
