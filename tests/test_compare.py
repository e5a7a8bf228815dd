"""compare: flattening nested model outputs and comparing them path by path."""

from collections import OrderedDict, namedtuple
from dataclasses import dataclass

import pytest
import torch

from deconv2shuffle.compare import compare_outputs, flatten_output, iter_leaves, tensor_errors
from deconv2shuffle.errors import VerificationError

Pair = namedtuple("Pair", "low high")


@dataclass
class Out:
    sample: torch.Tensor
    extra: object = None


class TupleOutput:
    """Like a ModelOutput that is not a Mapping: only to_tuple()."""

    def __init__(self, *tensors):
        self._tensors = tensors

    def to_tuple(self):
        return self._tensors


class Plain:
    def __init__(self, a, b):
        self.a, self.b = a, b
        self._private = torch.zeros(1)


class DictDataclass(OrderedDict):
    """diffusers' BaseOutput is an OrderedDict holding only its non-None fields."""


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(
    ("output", "paths"),
    [
        (t(1.0), ["output"]),
        ({"sample": t(1.0), "aux": [t(2.0), t(3.0)]}, ["output['sample']", "output['aux'][0]", "output['aux'][1]"]),
        ([{"boxes": t(1.0), "labels": torch.tensor([1])}], ["output[0]['boxes']", "output[0]['labels']"]),
        (Pair(t(1.0), t(2.0)), ["output.low", "output.high"]),
        (Out(t(1.0), t(2.0)), ["output.sample", "output.extra"]),
        (Out(t(1.0)), ["output.sample"]),
        (TupleOutput(t(1.0), t(2.0)), ["output[0]", "output[1]"]),
        (Plain(t(1.0), {"c": t(2.0)}), ["output.a", "output.b['c']"]),
        (DictDataclass(sample=t(1.0)), ["output['sample']"]),
        ((t(1.0), None, "text", 3), ["output[0]"]),
    ],
)
def test_flatten_names_every_tensor_by_its_path(output, paths):
    assert [p for p, _ in flatten_output(output)] == paths


def test_flatten_keeps_the_tensor_objects_and_order():
    a, b = t(1.0), t(2.0)
    flat = flatten_output({"b": b, "a": a}, root="y")
    assert flat[0][0] == "y['b']" and flat[0][1] is b and flat[1][1] is a


def test_a_self_referencing_output_is_refused_not_recursed_forever():
    loop: list = [t(1.0)]
    loop.append(loop)
    with pytest.raises(VerificationError, match=r"output\[1\]: .*refers to itself"):
        list(iter_leaves(loop))


def test_compare_reports_each_tensor_and_the_worst_path():
    ref = {"sample": t(1.0, -4.0), "aux": [t(10.0)]}
    cand = {"sample": t(1.0, -4.5), "aux": [t(10.0 + 1e-9)]}
    result = compare_outputs(ref, cand)
    assert [d.path for d in result.tensors] == ["output['sample']", "output['aux'][0]"]
    sample, aux = result.tensors
    assert sample.max_abs_error == pytest.approx(0.5) and sample.max_rel_error == pytest.approx(0.5 / 4)
    assert aux.max_abs_error == pytest.approx(1e-9, rel=1e-6) and aux.max_rel_error == pytest.approx(1e-10, rel=1e-6)
    assert result.worst is sample and result.max_rel_error == pytest.approx(0.125)
    assert not result.within(0.1) and result.within(0.2)
    summary = result.as_dict()
    assert summary["worst_path"] == "output['sample']" and summary["tensors"] == 2
    assert summary["per_tensor"][0]["shape"] == [2]


def test_identical_outputs_compare_to_zero_also_with_nan_and_inf_in_the_same_places():
    ref = (t(1.0, float("nan"), float("inf")), torch.tensor([1, 2]))
    result = compare_outputs(ref, (ref[0].clone(), ref[1].clone()))
    assert result.max_abs_error == 0.0 and result.max_rel_error == 0.0


def test_a_nan_where_the_reference_has_a_number_is_an_infinite_error():
    result = compare_outputs(t(1.0, 2.0), t(1.0, float("nan")))
    assert result.max_abs_error == float("inf")


def test_relative_error_of_an_all_zero_reference_is_the_absolute_error():
    assert tensor_errors(torch.zeros(3), t(0.0, 0.0, 0.25)) == (0.25, 0.25)


def test_compare_handles_complex_int_and_empty_tensors():
    assert tensor_errors(torch.tensor([1 + 1j]), torch.tensor([1 + 2j])) == (1.0, pytest.approx(1 / 2**0.5))
    assert tensor_errors(torch.tensor([3]), torch.tensor([5])) == (2.0, pytest.approx(2 / 3))
    assert tensor_errors(torch.zeros(0, 3), torch.zeros(0, 3)) == (0.0, 0.0)


def test_numbers_in_the_output_compare_numerically_and_strings_must_match():
    result = compare_outputs({"loss": 1.0, "name": "unet"}, {"loss": 1.5, "name": "unet"})
    assert result.max_abs_error == 0.5
    with pytest.raises(VerificationError, match=r"output\['name'\] is 'unet' .* and 'vae'"):
        compare_outputs({"name": "unet"}, {"name": "vae"})


@pytest.mark.parametrize(
    ("ref", "cand", "message"),
    [
        (
            {"a": t(1.0), "b": t(2.0)},
            {"a": t(1.0)},
            r"output\[.b.\] is in the original model.s output but not in the converted one",
        ),
        ({"a": t(1.0)}, {"a": t(1.0), "c": t(1.0)}, r"output\['c'\] is in the converted model's output but not"),
        ([t(1.0, 2.0)], [t(1.0, 2.0, 3.0)], r"output\[0\] has shape \(2,\) .* and \(3,\) in the converted"),
        (Out(t(1.0), t(1.0)), Out(t(1.0), None), r"output.extra is a tensor \(1,\) .* and None in the converted"),
        (t(1.0), [t(1.0)], r"output is a tensor \(1,\) in the original model's output and a list"),
    ],
)
def test_structures_that_differ_name_the_first_differing_path(ref, cand, message):
    with pytest.raises(VerificationError, match=message):
        compare_outputs(ref, cand)


def test_compare_uses_the_given_root_name():
    with pytest.raises(VerificationError, match=r"^y\[0\] has shape"):
        compare_outputs([t(1.0)], [t(1.0, 2.0)], root="y")
