"""`extra-class`: the pair is a class of its own, K + P outputs (option 1).

Decoding needs no threshold: predicting the pair class means the set {A, B}. Its probability mass is
split evenly between A and B to give class probabilities over the K real classes.
$ ambig-bench run --strategy extra-class --epochs 3
"""

import torch

from ambig_bench.strategies.base import STRATEGIES, Labels, Strategy


@STRATEGIES.register("extra-class")
class ExtraClass(Strategy):
    """K + P outputs: each pair is an extra class; softmax CE; argmax decodes to {y} or {A, B}."""

    uses_threshold = False

    @property
    def num_outputs(self) -> int:
        return self.num_classes + len(self.pairs)

    def epoch_targets(self, labels: Labels, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        label = torch.where(labels.between, self.num_classes + labels.pair, labels.a)
        return torch.arange(len(labels), device=labels.a.device), self.one_hot(label)

    def _pair_matrix(self, device: torch.device) -> torch.Tensor:
        """(K+P)×K map from outputs to real classes: identity, then each pair row 0.5 on A and B."""
        m = torch.zeros(self.num_outputs, self.num_classes, device=device)
        m[: self.num_classes] = torch.eye(self.num_classes, device=device)
        for p, (a, b) in enumerate(self.pairs):
            m[self.num_classes + p, [a, b]] = 0.5
        return m

    def class_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(1) @ self._pair_matrix(logits.device)

    def predict_sets(self, logits: torch.Tensor, threshold: float) -> torch.Tensor:
        return self._pair_matrix(logits.device)[logits.argmax(1)] > 0

    def ambiguity(self, logits: torch.Tensor) -> torch.Tensor:
        """Total probability on the pair classes."""
        return logits.float().softmax(1)[:, self.num_classes:].sum(1)
