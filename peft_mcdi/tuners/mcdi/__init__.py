from peft_mcdi.tuners.mcdi.config import McDiConfig
from peft_mcdi.tuners.mcdi.model import AdaptInfo, McDiModel


__all__ = ["AdaptInfo", "McDiConfig", "McDiModel"]
