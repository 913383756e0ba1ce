"""Bundle adjustment as a user with only a residual and a pattern solves it.

`BundleAdjustmentProblem.jacobian_sparsity` must mark exactly the entries of
the hand-written `jacobian_coo`; the coloring of BAL-49 must reach the lower
bound of 12 colors (9 camera + 3 point parameters per row); the colored J of
the plain residual (through ``vmap(jvp)``) must equal the closed form.
"""

import pytest
import torch

from trustls.operators import SparseOperator
from trustls.problems.bal import load_bal
from trustls.sparsity.colored import ColoredJacobian, VmapDecision
from trustls.sparsity.coloring import color_columns
from trustls.sparsity.pattern import jacobian_pattern


@pytest.fixture(scope="module")
def problem():
    return load_bal()


@pytest.fixture(scope="module")
def colored(problem):
    return ColoredJacobian(problem.jacobian_sparsity())


def test_pattern_marks_the_closed_form_entries(problem):
    sparsity = problem.jacobian_sparsity()
    assert sparsity.layout == torch.sparse_coo and sparsity.dtype == torch.bool and sparsity.is_coalesced()
    assert tuple(sparsity.shape) == (problem.n_residuals, problem.n_parameters)
    rows, cols, _ = problem.jacobian_coo(problem.x0)
    pattern = jacobian_pattern(sparsity)  # validates sorted, unique entries
    assert pattern.nnz == 24 * problem.n_observations
    assert torch.equal(pattern.rows, rows) and torch.equal(pattern.cols, cols)


def test_coloring_reaches_the_lower_bound(colored):
    assert colored.coloring.lower_bound == 12
    assert colored.n_colors == 12  # the task allows up to 15
    assert colored.coloring.conflicts(colored.pattern).numel() == 0


@pytest.mark.parametrize("ordering", ["smallest-last", "incidence-degree", "natural"])
def test_every_ordering_stays_within_15_colors(problem, ordering):
    assert color_columns(problem.jacobian_sparsity(), ordering).n_colors <= 15


@pytest.mark.parametrize("batched", [True, False], ids=["vmap", "double-backward"])
def test_colored_jacobian_equals_the_closed_form(problem, colored, batched):
    x = problem.x0 + 1e-3 * torch.randn(problem.n_parameters, generator=torch.Generator().manual_seed(0),
                                        dtype=torch.float64)
    result = colored(problem.residual, x, decision=None if batched else VmapDecision(failure="forced"))
    assert result.batched == batched and result.calls == 1
    rows, cols, values = problem.jacobian_coo(x)
    # Same sorted entries: the values compare one to one.
    assert torch.equal(result.jacobian.rows, rows) and torch.equal(result.jacobian.cols, cols)
    torch.testing.assert_close(result.jacobian.values, values, rtol=1e-10, atol=1e-8 * float(values.abs().max()))
    assert isinstance(result.jacobian, SparseOperator)
