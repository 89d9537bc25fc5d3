"""How the tests start several CPU processes the way users do: ``accelerate launch --multi_gpu`` over gloo
(plain ``--num_processes 2`` on a CPU machine silently runs one process)."""

import socket
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(num_processes: int) -> list[str]:
    """The command prefix; append the script and its arguments."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
