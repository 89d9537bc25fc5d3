"""Trajectory zoo: SAM, the recorder and the on-disk store."""
