"""Run a script in a fresh JAX process on fake CPU devices (the device count is fixed when JAX starts, so a test
that needs 8 devices cannot get them in the pytest process) and read the JSON its last line prints."""

import json
import os
import subprocess
import sys


def run_on_fake_devices(script: str, devices: int = 8, timeout_s: int = 300) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
