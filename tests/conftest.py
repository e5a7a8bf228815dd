import hashlib
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from deconv2shuffle.cli import app

MODELS_PY = '''
import torch
from torch import nn


class Old(nn.Module):
    def __init__(self, ch=8):
        super().__init__()
        self.head = nn.Conv2d(3, ch, 3, padding=1)
        self.up = nn.ConvTranspose2d(ch, 2 * ch, 4, 2, 1)
        self.tail = nn.Conv2d(2 * ch, 3, 3, padding=1)

    def forward(self, x):
        return self.tail(torch.relu(self.up(torch.relu(self.head(x)))))


class New(nn.Module):
    def __init__(self, ch=8, kernel=3, padding=1, divide=False, extra=False, missing=False):
        super().__init__()
        self.head = nn.Conv2d(3, ch, 3, padding=1)
        out = 2 * ch if divide else 8 * ch
        self.up = nn.Sequential(nn.Conv2d(ch, out, kernel, padding=padding), nn.PixelShuffle(2))
        if not missing:
            self.tail = nn.Conv2d(out // 4, 3, 3, padding=1)
        if extra:
            self.extra = nn.Linear(2, 2)

    def forward(self, x):
        y = self.up(torch.relu(self.head(x)))
        return self.tail(torch.relu(y)) if hasattr(self, "tail") else y


class Forum(nn.Module):
    """The forum case: ConvTranspose2d(64, 256, 4, 2, 1)."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(64, 256, 4, 2, 1)

    def forward(self, x):
        return self.up(x)


class ForumNew(nn.Module):
    def __init__(self, kernel=3, padding=1, out=1024):
        super().__init__()
        self.conv = nn.Conv2d(64, out, kernel, padding=padding)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        return self.shuffle(self.conv(x))
'''

SPEC = """version = 1
[[layers]]
source = "up"
stride = 2
padding = 1
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli(runner):
    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture
def models_py(tmp_path: Path) -> Path:
    path = tmp_path / "models_fixture.py"
    path.write_text(MODELS_PY)
    return path


@pytest.fixture
def old_model(models_py):
    import importlib.util

    spec = importlib.util.spec_from_file_location("models_fixture_mod", models_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    return mod


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    return path


def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    m = nn.Module()
    m.head = nn.Conv2d(3, 8, 3, padding=1)
    m.up = nn.ConvTranspose2d(8, 16, 4, 2, 1)
    m.tail = nn.Conv2d(16, 3, 3, padding=1)
    return m.state_dict()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))
