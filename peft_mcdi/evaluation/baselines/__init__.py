"""Baselines the generators are compared with: a one-pass hypernetwork, a multi-task LoRA, and for vision heads the
prototype rule and a Reptile initialisation."""
