"""Built-in task families; importing this package registers them with ``get_tasksets``."""

from peft_mcdi.data.logistic import LogisticFamilyConfig, LogisticTask


__all__ = ["LogisticFamilyConfig", "LogisticTask"]
