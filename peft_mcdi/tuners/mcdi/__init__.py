from peft_mcdi.tuners.mcdi.config import McDiConfig
from peft_mcdi.tuners.mcdi.export import export_lora
from peft_mcdi.tuners.mcdi.model import AdaptInfo, McDiModel


__all__ = ["AdaptInfo", "McDiConfig", "McDiModel", "export_lora"]
