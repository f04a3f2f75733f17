"""One way for the tests to start `accelerate launch` with the shipped two-CPU-process configuration:
this interpreter's accelerate (an `accelerate` script on PATH may belong to another Python, whose
workers would import another installation of dbeta), a free port, no inherited rank variables, and
the launcher in its own session, so that a timeout kills the launcher and every rank it started
(a plain `subprocess.run(timeout=...)` kills the launcher only and leaves the ranks running)."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO_ROOT / "train" / "configs" / "cpu_2_processes.yaml"
_RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(cwd: Path, *launched: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file train/configs/cpu_2_processes.yaml LAUNCHED...` in `cwd`
    (`launched`: a script and its arguments, or "-m", a module and its arguments). On timeout the
    whole process group is killed and `subprocess.TimeoutExpired` raised, with what was printed."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG),
        "--main_process_port", str(free_port()), *launched,
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key not in _RANK_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise subprocess.TimeoutExpired(command, timeout, output=stdout, stderr=stderr) from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
