"""ambig-bench: which training strategy to use when some images sit between two classes.

$ ambig-bench run --strategy soft --epochs 3
"""

__version__ = "0.1.0"
