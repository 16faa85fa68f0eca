"""scripts/dev loads a small demo feature set and prints a curl command that works as printed."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess

from tests.harness import dev_env, start_dev


def test_dev_banner_curl_returns_demo_features(dev_home, tmp_path):
    env = dev_env(dev_home)
    log = tmp_path / "dev.log"
    proc = start_dev(env, log)
    try:
        printed = log.read_text()
        match = re.search(r"features\s+(curl .*?)\n\s+\(", printed, re.S)
        assert match, printed
        command = match.group(1).replace("\\\n", " ")
        argv = shlex.split(command)
        result = subprocess.run([*argv, "-s", "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=30)
        body, status = result.stdout.rsplit("\n", 1)
        assert status == "200", body
        features = json.loads(body)["features"]
        assert len(features) == 2 and all(row is not None and row["entity_key"] == 42 for row in features.values())
        # Without the service token the same URL is refused.
        bare = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", argv[-1]], capture_output=True, text=True)
        assert bare.stdout == "401"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
