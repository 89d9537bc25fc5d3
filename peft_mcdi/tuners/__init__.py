"""PEFT tuners whose weights are generated."""
