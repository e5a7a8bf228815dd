"""The end-to-end check compares every tensor of a nested model output."""

import torch
from torch import nn

from deconv2shuffle import convert_model, end_to_end


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 2, 4, 2, 1)

    def forward(self, x):
        y = self.up(x)
        return {"sample": y, "extra": [y.mean(dim=(2, 3)), (y.argmax(dim=1),)]}


def test_dict_and_list_outputs_are_compared_tensor_by_tensor():
    torch.manual_seed(0)
    model = DictOut()
    old = model.state_dict()
    new = convert_model(model).state_dict()
    result = end_to_end(old, new, model, None, "", (1, 3, 5, 5))
    assert result is not None and result["max_rel_error"] < 1e-12
    broken = dict(new)
    broken["up.conv.bias"] = broken["up.conv.bias"] + 1.0
    result = end_to_end(old, broken, model, None, "", (1, 3, 5, 5))
    assert result["max_rel_error"] > 1e-3
