"""The LLM adaptation benchmark: LoRA generated from a task description, against fine-tuning, a multi-task LoRA,
the prompted base model and Text-to-LoRA-style baselines, on WordNet concept tasks (issue 5)."""
