"""loading: one call from a checkpoint (converted or original) to a ready converted model."""

import pytest
import torch
from safetensors.torch import save_file, save_model
from torch import nn

from deconv2shuffle import convert_model
from deconv2shuffle.errors import CheckpointError, SpecError
from deconv2shuffle.loading import load_converted

TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class Net(nn.Module):
    def __init__(self, ch=4, weight_norm=False, tied=False):
        super().__init__()
        self.head = nn.Conv2d(1, ch, 3, padding=1)
        up = nn.ConvTranspose2d(ch, ch, 4, 2, 1)
        self.up = nn.utils.weight_norm(up) if weight_norm else up
        self.tail = nn.Conv2d(ch, 1, 3, padding=1)
        if tied:
            self.tail2 = nn.Conv2d(ch, 1, 3, padding=1)
            self.tail2.weight = self.tail.weight

    def forward(self, x):
        return self.tail(torch.relu(self.up(self.head(x))))


def _trained(**kwargs):
    torch.manual_seed(0)
    model = Net(**kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # not the factory's initialisation
    return model


X = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def _check(loaded, original):
    assert not loaded.training
    assert not any(isinstance(m, TRANSPOSED) for m in loaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), original(X), rtol=1e-5, atol=1e-6)


def test_a_converted_safetensors_file_loads_into_the_converted_model(tmp_path):
    original = _trained()
    save_file(convert_model(original).state_dict(), tmp_path / "new.safetensors")
    _check(load_converted(Net, tmp_path / "new.safetensors"), original)


def test_an_original_lightning_style_file_loads_and_is_converted(tmp_path):
    original = _trained()
    torch.save({"state_dict": {f"model.{k}": v for k, v in original.state_dict().items()}}, tmp_path / "old.ckpt")
    _check(load_converted(Net, tmp_path / "old.ckpt"), original)


def test_a_given_model_is_left_as_it_was(tmp_path):
    original = _trained()
    torch.save(convert_model(original).state_dict(), tmp_path / "new.pt")
    given = Net()
    before = {k: v.clone() for k, v in given.state_dict().items()}
    _check(load_converted(given, tmp_path / "new.pt"), original)
    assert isinstance(given.up, nn.ConvTranspose2d)
    assert all(torch.equal(before[k], v) for k, v in given.state_dict().items())


@pytest.mark.parametrize("converted_file", [True, False])
def test_weight_norm_layers_load_from_either_file(tmp_path, converted_file):
    original = _trained(weight_norm=True)
    state = convert_model(original).state_dict() if converted_file else original.state_dict()
    torch.save(state, tmp_path / "w.pt")
    _check(load_converted(lambda: Net(weight_norm=True), tmp_path / "w.pt"), original)


def test_tied_weights_stored_once_load_under_every_name(tmp_path):
    original = _trained(tied=True)
    save_model(convert_model(original), str(tmp_path / "tied.safetensors"))  # keeps one name of a shared tensor
    loaded = load_converted(lambda: Net(tied=True), tmp_path / "tied.safetensors")
    _check(loaded, original)
    assert loaded.tail2.weight is loaded.tail.weight


def test_a_model_built_with_other_arguments_is_refused_naming_keys(tmp_path):
    torch.save(convert_model(_trained()).state_dict(), tmp_path / "new.pt")
    with pytest.raises(
        CheckpointError, match=r"new\.pt: key 'head.weight' has shape \(4, 1, 3, 3\), the model wants \(8, 1, 3, 3\)"
    ):
        load_converted(lambda: Net(ch=8), tmp_path / "new.pt")


def test_missing_and_unexpected_keys_are_counted_unless_strict_is_off(tmp_path):
    state = convert_model(_trained()).state_dict()
    state["extra.weight"] = torch.ones(1)
    del state["tail.bias"]
    torch.save(state, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=r"1 missing keys \(first 'tail.bias'\); 1 unexpected keys"):
        load_converted(Net, tmp_path / "new.pt")
    model = load_converted(Net, tmp_path / "new.pt", strict=False)
    torch.testing.assert_close(model.head.weight, state["head.weight"])


def test_a_factory_that_builds_no_module_is_named():
    with pytest.raises(SpecError, match="the factory returned a int, not an nn.Module"):
        load_converted(lambda: 3, "unused.pt")
    with pytest.raises(SpecError, match="expected an nn.Module or a function"):
        load_converted(3, "unused.pt")  # type: ignore[arg-type]
