"""peft_mcdi: adapter weights generated, not trained (Mc-Di local consistency diffusion + Reptile)."""

__version__ = "0.1.0.dev0"


from peft_mcdi import _logging  # noqa: F401  (first: before peft imports bitsandbytes)
from peft_mcdi._registration import register
from peft_mcdi.auto import AutoMcDiModel
from peft_mcdi.generator.codec import TokenLayout, WeightCodec
from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.model import GeneratorConfig, McDiGenerator
from peft_mcdi.generator.schedulers import LocalConsistencyScheduler, SchedulerConfig
from peft_mcdi.meta.trainer import MetaTrainConfig, MetaTrainer
from peft_mcdi.tasks.base import Task, TaskSet, TaskSets, get_tasksets
from peft_mcdi.tuners.mcdi import AdaptInfo, McDiConfig, McDiModel, export_lora
from peft_mcdi.zoo.recorder import RecorderConfig, collect
from peft_mcdi.zoo.sam import SAM
from peft_mcdi.zoo.store import ZooCorruptError, ZooStore


register()  # idempotent: makes "MCDI" a PEFT type (get_peft_model, PeftModel.from_pretrained)

__all__ = [
    "AdaptInfo",
    "AutoMcDiModel",
    "McDiConfig",
    "McDiModel",
    "SAM",
    "DenoiserConfig",
    "GeneratorConfig",
    "LocalConsistencyScheduler",
    "McDiGenerator",
    "MetaTrainConfig",
    "MetaTrainer",
    "RecorderConfig",
    "SchedulerConfig",
    "Task",
    "TaskSet",
    "TaskSets",
    "TokenLayout",
    "WeightCodec",
    "ZooCorruptError",
    "ZooStore",
    "collect",
    "export_lora",
    "get_tasksets",
]
