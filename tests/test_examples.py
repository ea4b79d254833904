"""The examples run as users would run them."""
import os
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


def test_fit_own_data_trains_selects_and_predicts(tmp_path):
    out = subprocess.run([sys.executable, str(EXAMPLES / "fit_own_data.py"), "--epochs", "2", "--device", "cpu",
                          "--n-train", "400", "--out", str(tmp_path / "own")], capture_output=True, text=True,
                         timeout=300, check=True, cwd=tmp_path).stdout
    assert "(360 train / 40 val / 100 test images 1x16x16" in out
    assert re.search(r"^test accuracy [\d.]+% \(loss [\d.]+\) at epoch \d of 2", out, re.M), out
    assert len(re.findall(r"^predicted (square|disc|cross) \([\d.]+%\), truly (square|disc|cross)$", out, re.M)) == 5
    assert sorted(os.listdir(tmp_path / "own" / "run"))[:2] == ["best.npz", "checkpoint.npz"]
