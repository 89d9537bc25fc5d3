"""Task families: the abstraction (``base``) and one module per family. Importing this package registers the
built-in families with ``get_tasksets``: logistic (SPEC §3.3), WordNet concepts on a text base (``wordnet``,
``text_lora``), word forms written by a causal LM (``wordforms``, ``text_generation``), Hub binary-classification
tasks (``hub``) and the vision suites (``vision_suites`` over ``glyphs``, ``images`` and ``episodes``)."""

from peft_mcdi.tasks import vision_suites  # noqa: F401  (registers the vision suites)
from peft_mcdi.tasks.base import Task, TaskSet, TaskSets, get_tasksets, register_tasksets
from peft_mcdi.tasks.hub import HubTaskSpec
from peft_mcdi.tasks.logistic import LogisticFamilyConfig, LogisticTask
from peft_mcdi.tasks.text_generation import SharedGenerativeLoRAModel, WordFormLoRATask
from peft_mcdi.tasks.text_lora import ConceptLoRATask, SharedCausalLoRAModel, SharedLoRAModel


__all__ = [
    "ConceptLoRATask",
    "HubTaskSpec",
    "LogisticFamilyConfig",
    "LogisticTask",
    "SharedCausalLoRAModel",
    "SharedGenerativeLoRAModel",
    "SharedLoRAModel",
    "Task",
    "TaskSet",
    "TaskSets",
    "WordFormLoRATask",
    "get_tasksets",
    "register_tasksets",
]
