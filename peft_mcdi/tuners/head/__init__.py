"""Generated classifier heads for frozen vision backbones: config / model pair (the vision side of the tuner)."""

from peft_mcdi.tuners.head.config import McDiHeadConfig
from peft_mcdi.tuners.head.model import HeadAdaptInfo, McDiHeadModel


__all__ = ["HeadAdaptInfo", "McDiHeadConfig", "McDiHeadModel"]
