"""hpcinfer: distributed batch inference for HPC clusters.

This module must stay import-light (no numpy, no jax): the runtime sets each rank's
thread limits before those libraries are first imported.
"""

__version__ = "0.1.0"
