"""Running the gpucnn command in tests: in a fresh interpreter, and checking what it says on stderr."""
import os
import re
import subprocess
import sys
from pathlib import Path

import gpucnn

REPO = str(Path(gpucnn.__file__).resolve().parent.parent)


def gpucnn_cmd(*args, cwd=None, env=None):
    """Run `python -m gpucnn ARGS` in a fresh interpreter (with `env` added to the environment); returns the
    CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    env.pop("GPUCNN_DEVICE", None)
    env.pop("GPUCNN_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "gpucnn", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def assert_one_error_line(stderr, pattern):
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("gpucnn: error:"), f"expected one error line, got:\n{stderr}"
    assert re.search(pattern, lines[0]), lines[0]
    return lines


def assert_error(stderr, pattern):
    """An error that lists things keeps its line breaks: the first line is the error, the others its list."""
    assert "Traceback" not in stderr and stderr.startswith("gpucnn: error: "), stderr
    assert not stderr.startswith("gpucnn: error: \n") and "\n\n" not in stderr and stderr.endswith("\n")
    assert re.search(pattern, stderr, re.S), stderr
    return stderr.splitlines()
