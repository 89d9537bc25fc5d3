"""Built-in task families; importing this package registers them with ``get_tasksets``."""

from peft_mcdi.data.hub_tasks import HubTaskSpec
from peft_mcdi.data.logistic import LogisticFamilyConfig, LogisticTask
from peft_mcdi.data.text_lora import ConceptLoRATask, SharedCausalLoRAModel, SharedLoRAModel


__all__ = [
    "ConceptLoRATask",
    "HubTaskSpec",
    "LogisticFamilyConfig",
    "LogisticTask",
    "SharedCausalLoRAModel",
    "SharedLoRAModel",
]
