"""How trustls calls the user's function: counted calls, in-place mutation caught, outputs split and checked."""

import re
import warnings

import numpy as np
import pytest
import torch

from trustls import GaussNewtonModel, TrustRegion
from trustls.function import CountedFunction, check_outputs, split_outputs


def test_split_outputs_forms():
    z, t = torch.ones(2), torch.zeros(2, requires_grad=True)
    assert split_outputs(z) == (z, None)
    outputs, targets = split_outputs((z, t))
    assert outputs is z and not targets.requires_grad and torch.equal(targets, t)
    assert split_outputs((z, None)) == (z, None)
    stacked, none = split_outputs([torch.tensor(1.0), torch.tensor([2.0])])
    assert none is None and torch.equal(stacked, torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    "value, name, match",
    [
        (np.ones(2), "fun", r"fun must return a torch.Tensor computed from x, got ndarray: write fun with torch"),
        ([1.0, 2.0], "fun", r"fun must return a torch.Tensor computed from x, got list"),
        ((torch.ones(1), 3), "fun", r"fun must return targets as a torch.Tensor or None, got int"),
        ((torch.ones(1), torch.ones(1), torch.ones(1)), "fun", r"fun must return a torch.Tensor computed from x, got tuple"),
        ({"r": torch.ones(1)}, "fun", r"fun must return a torch.Tensor \(or a tuple \(outputs, targets\) of tensors\), got dict"),
        (1.0, "closure", r"closure must return the residual vector as a torch.Tensor, got float"),
    ],
)
def test_split_outputs_errors(value, name, match):
    with pytest.raises(TypeError, match=match):
        split_outputs(value, name)


def test_check_outputs_errors():
    x = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"fun must return a floating tensor, got dtype torch.int64"):
        check_outputs(torch.ones(2, dtype=torch.int64), x)
    with pytest.raises(TypeError, match=r"fun must return a tensor of x's dtype torch.float64, got torch.float32"):
        check_outputs(torch.ones(2), x)
    with pytest.raises(ValueError, match=r"fun must return outputs of constant shape \(2,\), got shape \(3,\)"):
        check_outputs(torch.ones(3, dtype=torch.float64), x, (2,))


def test_counted_function_counts_calls_including_those_that_raise():
    def fun(x):
        if x[0] > 0:
            raise RuntimeError("boom")
        return x

    counted = CountedFunction(fun)
    counted(torch.zeros(1))
    with pytest.raises(RuntimeError, match="boom"):
        counted(torch.ones(1))
    assert counted.calls == 2


def test_counted_function_passes_args_and_kwargs():
    counted = CountedFunction(lambda x, a, b=1.0: a * x + b, args=(2.0,), kwargs={"b": 3.0})
    assert torch.equal(counted(torch.ones(1)), torch.tensor([5.0]))


def test_in_place_mutation_of_the_argument_is_caught_without_a_copy():
    def mutating(x):
        with torch.no_grad():
            x.mul_(2.0)
        return x

    with pytest.raises(ValueError, match=r"fun must not modify its argument in place \(x was changed during the call\)"):
        CountedFunction(mutating)(torch.ones(2))


def test_not_callable():
    with pytest.raises(TypeError, match=r"fun must be callable, got int"):
        CountedFunction(3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_fun_may_return_a_list_of_scalars(dtype):
    # The list form of `split_outputs` in half precision: its stack is of x0's dtype, as a tensor's
    # must be, and is refused with the rule when it is not (it used to reach the model unconverted and
    # fail against the float32 iterate: "must return a tensor of x's dtype torch.float32").
    from trustls import GaussNewtonModel, TrustRegion

    def listed(x):
        return [10 * (x[1] - x[0] ** 2), 1 - x[0]]

    def stacked(x):
        return torch.stack(listed(x))

    x0 = torch.tensor([-1.2, 1.0], dtype=dtype)
    controller = TrustRegion(GaussNewtonModel(), solver="lstsq", max_nfev=40)
    result, reference = controller.solve(listed, x0), controller.solve(stacked, x0)
    assert result.x.dtype == dtype and torch.equal(result.x, reference.x)
    assert result.cost == reference.cost and result.nfev == reference.nfev and result.status == reference.status
    with pytest.raises(TypeError, match=rf"fun must return a tensor of x's dtype {dtype}, got torch.float32"):
        controller.solve(lambda x: [v.float() for v in listed(x)], x0)


# -- a user's residual as users write it (found by a bug hunt) ------------------------------

T = torch.linspace(0.0, 1.0, 20, dtype=torch.float64)
Y = 2.0 * torch.exp(-1.5 * T) + 0.3
X0 = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)


def decay(x):
    return x[0] * torch.exp(-x[1] * T) + x[2] - Y


def frozen_by_float(x):  # float() of x[1] enters the residual: autograd cannot follow it
    return x[0] * torch.exp(-float(x[1]) * T) + x[2] - Y


def branch_by_item(x):  # .item() only picks a branch: J is right
    return decay(x) if x[0].item() > 0 else -decay(x)


def host_read_warnings(fun, solver):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = TrustRegion(GaussNewtonModel(), solver).solve(fun, X0)
    return result, [str(w.message) for w in caught if "as a Python number" in str(w.message)]


@pytest.mark.parametrize("solver", ["lstsq", "cg"])
def test_a_python_number_read_from_x_in_the_residual_warns_once_naming_the_frozen_variable(solver):
    result, messages = host_read_warnings(frozen_by_float, solver)
    assert len(messages) == 1, messages  # one per solve, at x0, not one per step
    assert re.search(r"\(float\(\) at .*test_function\.py:\d+\), and J at x0 is zero in the columns of x\[1\]:",
                     messages[0])
    assert result.x[1] == X0[1]  # what the warning predicts: x[1] never moves


@pytest.mark.parametrize("solver", ["lstsq", "cg"])
def test_a_python_number_read_for_control_flow_is_silent_and_solves(solver):
    result, messages = host_read_warnings(branch_by_item, solver)
    assert messages == [] and result.success
    torch.testing.assert_close(result.x, torch.tensor([2.0, 1.5, 0.3], dtype=torch.float64), rtol=0, atol=1e-8)


@pytest.mark.parametrize("solver", ["lstsq", "cg"])
def test_an_in_place_write_into_the_differentiated_x_is_the_documented_error(solver):
    def fun(x):
        x[2] = 0.0  # torch refuses this write into the leaf that autograd differentiates
        return decay(x)

    with pytest.raises(ValueError, match=r"^fun must not modify its argument in place \(torch refused an in-place "
                                         r"write into a leaf tensor that requires grad: x, or a tensor of fun's own\): "
                                         r"compute on a copy, e\.g\. x = x\.clone\(\)") as caught:
        TrustRegion(GaussNewtonModel(), solver).solve(fun, X0)
    assert isinstance(caught.value.__cause__, RuntimeError)  # torch's own error, chained


def test_a_numpy_residual_without_a_jacobian_is_a_type_error_naming_the_remedy():
    def fun(x):
        return np.exp(-x[1] * T.numpy()) * x[0] + x[2] - Y.numpy()

    with pytest.raises(TypeError, match=r"fun must compute with torch operations on its tensor argument, got a "
                                        r"conversion to numpy .* or pass a Jacobian \(least_squares' jac="):
        TrustRegion(GaussNewtonModel(), "lstsq").solve(fun, X0)


def test_groups_of_residuals_are_not_taken_for_targets():
    """Found by a bug hunt: (x[:2] - 1, x[2:] - 2) was read as (outputs, targets), the second group
    detached, and x[2:] never moved while the solve reported GTOL success."""
    for solver in ("lstsq", "cg"):
        with pytest.raises(ValueError, match=r"fun must return \(outputs, targets\) with targets that do not depend "
                                             r"on x, got targets computed from x: .* torch\.cat\(\[r1, r2\]\)"):
            TrustRegion(GaussNewtonModel(), solver).solve(lambda x: (x[:2] - 1, x[2:] - 2), torch.zeros(4))
    # Targets computed through autograd from something else (a teacher network's outputs) are data.
    teacher = torch.nn.Linear(1, 1)
    data = teacher(torch.ones(3, 1)).reshape(-1)
    result = TrustRegion(GaussNewtonModel(), "lstsq").solve(lambda x: (x * torch.ones(3), data), torch.zeros(1))
    assert result.success and torch.allclose(result.x, data.detach().mean().reshape(1), atol=1e-6)
    with pytest.raises(ValueError, match=r"fun must return a list of one-element tensors \(or of tensors of one "
                                         r"shape\), got shapes \[\(\), \(2,\)\]: join groups of residuals"):
        TrustRegion(GaussNewtonModel(), "lstsq").solve(lambda x: [x[0] - 1, x[1:] - 2], torch.zeros(3))
