"""The examples run as users would run them."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_layers_in_your_code_learns(any_device):
    out = subprocess.run([sys.executable, str(EXAMPLES / "layers_in_your_code.py"), "--device", str(any_device)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    accuracy = float(re.search(r"training accuracy ([\d.]+)", out).group(1))
    assert accuracy >= 0.95, out


@pytest.mark.parametrize("script", ["train_lenet5.py", "alexnet_cifar10.py"])
def test_examples_parse_their_options(script):
    out = subprocess.run([sys.executable, str(EXAMPLES / script), "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "--device" in out and "--epochs" in out
