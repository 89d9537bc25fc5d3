"""Diffusion engine: schedule, codec, denoisers, sampling, the generator artefact."""
