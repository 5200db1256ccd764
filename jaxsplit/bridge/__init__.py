"""The PyTorch bridge: read a torch CNN as a layer table, prove a split numerically, run it.

Needs the optional extra ``jaxsplit[torch]``; ``import jaxsplit`` never imports torch.
"""

from .graph import LayerOp, TracedModel, UnsupportedModelError, from_torch, trace

__all__ = ["LayerOp", "TracedModel", "UnsupportedModelError", "from_torch", "trace"]
