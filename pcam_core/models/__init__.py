"""Models: one way to build a network, `Classifier` (a network with what is needed to use it), and how it
runs fastest on the machine at hand.

- `registry`: `create_model(name)` over the registry (`base_cnn`, `efficientnet_lite0`, any timm name),
  `Classifier`, checkpoints written and `load`ed with every field checked, the device.
- `calibrate`: precision, memory layout, batch and torch.compile timed per CPU, torch, model and task.
- `distributed`: the process's place under torchrun (rank, world, device) and the few collectives used.
"""

from pcam_core import lazy_surface

__all__ = ["Classifier", "create_model", "list_models", "load", "resolve_device"]
__getattr__, __dir__ = lazy_surface(__name__, {name: "registry" for name in __all__})
