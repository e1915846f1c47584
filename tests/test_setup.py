"""launch/setup.sh: a failed install fails the set-up and never marks the environment ready."""
import os
import subprocess


def test_setup_fails_loudly_when_installs_fail(tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PIP_FIND_LINKS")}
    env.update({"TUBEMAE_VENV": str(venv), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_CONFIG_FILE": os.devnull})
    r = subprocess.run(["bash", "launch/setup.sh"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode != 0
    assert "setup: failed" in r.stderr
    assert not (venv / ".tubemae-complete").exists()
