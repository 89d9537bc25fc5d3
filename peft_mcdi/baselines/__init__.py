"""Baselines the generator is compared with (SPEC §4)."""
