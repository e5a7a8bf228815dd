"""convert_model on the structures real models have: subclasses, shared layers, weight norm removal."""

import copy
import io

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, remove_weight_norm, weight_norm

from deconv2shuffle import convert_model
from deconv2shuffle.errors import ConversionError
from deconv2shuffle.nn import SubPixelConvTranspose1d, SubPixelConvTranspose2d, is_transposed


class Decoder(nn.ConvTranspose1d):
    """A separation model's decoder: the layer itself, squeezed (speechbrain's Sepformer has this shape)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return super().forward(x).squeeze(1) * self.gain


class Separator(nn.Module):
    def __init__(self):
        super().__init__()
        self.dec = Decoder(4, 1, 16, 8, bias=False)

    def forward(self, x):
        return self.dec(x)


def test_subclass_forward_is_kept_around_the_converted_layer():
    torch.manual_seed(0)
    model = Separator().double()
    new = convert_model(model)
    x = torch.randn(2, 4, 9, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
        got = new(x)
    assert want.shape == (2, 80) and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert isinstance(new.dec, Decoder) and isinstance(new.dec, SubPixelConvTranspose1d)
    assert not is_transposed(new.dec)
    assert set(new.state_dict()) == {"dec.gain", "dec.conv.weight"}
    assert new.dec.plan.target.kernel_size == (2,)  # the minimal form
    assert "SubPixelDecoder" in repr(new)
    with pytest.raises(AttributeError, match=r"has no 'weight'.*super\(\).forward"):
        new.dec.weight  # noqa: B018
    again = convert_model(new)  # already converted: nothing left to do, nothing breaks
    assert set(again.state_dict()) == set(new.state_dict()) and type(again.dec) is type(new.dec)
    for clone in (copy.deepcopy(new), _pickled(new)):
        with torch.no_grad():
            torch.testing.assert_close(clone(x), want, rtol=1e-12, atol=1e-12)
        assert type(clone.dec) is type(new.dec)


def _pickled(model: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


class PaddingHack(nn.ConvTranspose2d):
    def _output_padding(self, *args, **kwargs):
        return [1, 1]


def test_subclass_that_changes_the_layer_math_is_refused_by_name():
    with pytest.raises(ConversionError, match=r"layer '0': .*PaddingHack overrides _output_padding"):
        convert_model(nn.Sequential(PaddingHack(2, 2, 3, 2, 1)))


@pytest.mark.parametrize("layout", ["hook", "parametrization"])
def test_weight_normed_subclass_keeps_its_forward(layout):
    torch.manual_seed(0)
    model = Separator().double()
    weight_norm(model.dec) if layout == "hook" else parametrizations.weight_norm(model.dec)
    new = convert_model(model)
    x = torch.randn(1, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x), rtol=1e-12, atol=1e-12)
    assert set(new.state_dict()) == {"dec.gain", "dec.conv.weight"}


class Blocks(nn.Module):
    """A layer kept in two containers (MONAI DynUNet keeps its upsampling blocks so) and one shared directly."""

    def __init__(self):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(3, 3, 4, 2, 1), nn.ReLU())
        self.skip = nn.ModuleDict({"b": self.up})
        self.tail = nn.ConvTranspose2d(3, 2, 2, 2)
        self.alias = self.tail

    def forward(self, x):
        return self.alias(self.skip["b"](x)) + self.tail(self.up(x))


def test_every_name_of_a_shared_layer_is_converted_and_stays_shared():
    torch.manual_seed(0)
    model = Blocks().double()
    new = convert_model(model)
    assert isinstance(new.alias, SubPixelConvTranspose2d) and new.alias is new.tail
    assert isinstance(new.skip["b"][0], SubPixelConvTranspose2d) and new.skip["b"][0] is new.up[0]
    assert not any(is_transposed(m) for m in new.modules())
    assert set(new.state_dict(keep_vars=True)) >= {"tail.conv.weight", "alias.conv.weight", "skip.b.0.conv.weight"}
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x), rtol=1e-12, atol=1e-12)


def test_one_shared_layer_with_two_targets_is_refused():
    from deconv2shuffle.geometry import TargetGeometry

    model = Blocks()
    targets = {"tail": TargetGeometry((1, 1), (0, 0), (0, 0)), "alias": TargetGeometry((3, 3), (1, 1), (1, 1))}
    with pytest.raises(ConversionError, match="tail = alias is one module given different targets"):
        convert_model(model, targets=targets)


class SBConvTranspose1d(nn.Module):
    """The wrapper speechbrain's HiFi-GAN builds its upsampling layers from."""

    def __init__(self, c_in, c_out, k, s, p):
        super().__init__()
        self.conv = weight_norm(nn.ConvTranspose1d(c_in, c_out, k, s, p))

    def forward(self, x):
        return self.conv(x)

    def remove_weight_norm(self):
        self.conv = remove_weight_norm(self.conv)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_pre = weight_norm(nn.Conv1d(5, 8, 7, padding=3))
        self.ups = nn.ModuleList([SBConvTranspose1d(8, 4, 16, 8, 4), SBConvTranspose1d(4, 2, 4, 2, 1)])
        self.extra = weight_norm(nn.ConvTranspose1d(2, 2, 4, 2, 1))

    def forward(self, x):
        x = self.conv_pre(x)
        for up in self.ups:
            x = up(torch.nn.functional.leaky_relu(x, 0.1))
        return torch.tanh(self.extra(x))

    def remove_weight_norm(self):
        remove_weight_norm(self.conv_pre)
        for up in self.ups:
            up.remove_weight_norm()
        remove_weight_norm(self.extra)


def test_converted_generator_supports_remove_weight_norm():
    torch.manual_seed(0)
    gen = Generator().double()
    with torch.no_grad():
        for up in gen.ups:
            up.conv.weight_g.mul_(1.3)
    x = torch.randn(1, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        want = gen(x)
    new = convert_model(gen)
    assert "ups.0.conv.conv.weight" in new.state_dict() and "ups.0.conv.weight_g" not in new.state_dict()
    new.remove_weight_norm()  # what the vocoder's inference code calls; folded already, so a no-op
    with torch.no_grad():
        torch.testing.assert_close(new(x), want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.jit.script(new)(x), want, rtol=1e-12, atol=1e-12)  # hooks gone, scriptable
    with pytest.raises(ValueError, match="weight_norm of 'weight' not found"):
        remove_weight_norm(new.extra)  # removed once, like any layer
