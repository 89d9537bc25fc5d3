"""Meta-learning: tasks, losses, the generator training data and the Reptile / single-level trainer."""
