"""`hard`: every in-between image gets the first class of its pair, as a hurried labeller would do.

The baseline that shows what ignoring ambiguity costs.
$ ambig-bench run --strategy hard,soft --epochs 3
"""

from ambig_bench.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("hard")
class Hard(Strategy):
    """One-hot on the first class of the pair for every in-between image (a hurried labeller)."""

    # The base class already trains on one-hot `labels.a`, which is exactly this strategy.
