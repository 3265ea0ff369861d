"""fedpkt: federated, privacy-preserving PersonaPKT (Han et al., 2023).

The core library. It knows nothing of Flower's runtime, so that the maths, the training loops and
the metrics are usable (and tested) on their own, and so that centralized baselines and federated
clients run exactly the same code.
"""

__version__ = "0.1.0"
