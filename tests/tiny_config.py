"""The smallest whole-pipeline run the CLI and plot tests train (logistic family, seconds on one core)."""

TINY_RUN = {
    "taskset": "logistic",
    "taskset_kwargs": {"num_train_tasks": 8, "num_test_tasks": 3, "num_train_examples": 64, "num_test_examples": 200},
    "recorder": {"num_epochs": 3},
    "denoiser": {"type": "mlp", "condition_dim": 4, "hidden_dim": 16, "num_layers": 1},
    "meta": {"num_outer_steps": 4, "meta_batch_size": 4, "samples_per_task": 4, "log_every": 2},
    "hypernetwork_steps": 5,
    "progress": False,
}
