"""Diagonal blocks of JᵀJ, block-Jacobi scaling and J T over non-contiguous column blocks."""

import pytest
import torch
from block_structured import block_problem

import trustls.sparsity.normal_blocks as normal_blocks_module
from trustls.operators import BlockDiagonalOperator, ScaledOperator, SparseOperator
from trustls.sparsity import (
    BlockPartition,
    block_jacobi_scaling,
    normal_diagonal_blocks,
    times_block_diagonal,
)
from trustls.sparsity.normal_blocks import block_slots

F64 = torch.float64


def dense_blocks(dense, groups):
    normal = dense.T @ dense
    return [torch.stack([normal[block][:, block] for block in g]) for g in groups]


@pytest.mark.parametrize("looped", [True, False], ids=["looped", "scattered"])
@pytest.mark.parametrize("full_slots, duplicates", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_normal_blocks_equal_the_dense_ones(contiguous, full_slots, duplicates, looped, generator, monkeypatch):
    if not looped:
        monkeypatch.setattr(normal_blocks_module, "_MAX_LOOPED_BLOCKS", 0)
    dense, J, partition = block_problem(generator, contiguous=contiguous, full_slots=full_slots, duplicates=duplicates)
    for got, expected in zip(normal_diagonal_blocks(J, partition), dense_blocks(dense, partition.groups)):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("looped", [True, False], ids=["looped", "scattered"])
@pytest.mark.parametrize("full_slots, duplicates", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_times_block_diagonal_equals_the_dense_product(contiguous, full_slots, duplicates, looped, generator,
                                                       monkeypatch):
    if not looped:
        monkeypatch.setattr(normal_blocks_module, "_MAX_LOOPED_BLOCKS", 0)
    dense, J, partition = block_problem(generator, contiguous=contiguous, full_slots=full_slots, duplicates=duplicates)
    T = BlockDiagonalOperator(
        [torch.randn(g.shape[0], g.shape[1], g.shape[1], generator=generator, dtype=F64) for g in partition.groups],
        columns=partition.groups,
    )
    JT = times_block_diagonal(J, T)
    torch.testing.assert_close(JT.to_dense(), dense @ T.to_dense(), rtol=1e-12, atol=1e-12)
    # Blocks whose slots are all stored keep J's pattern: products stay one sparse product.
    assert (JT.pattern is J.pattern) == (full_slots and not duplicates)
    again = times_block_diagonal(J.with_values(2 * J.values), T)
    torch.testing.assert_close(again.to_dense(), 2 * dense @ T.to_dense(), rtol=1e-12, atol=1e-12)
    assert again.pattern is JT.pattern


def test_times_block_diagonal_with_a_contiguous_transform(generator):
    dense, J, partition = block_problem(generator, contiguous=True)
    # Contiguous groups in the order of x: the BlockDiagonalOperator of `trustls.scaling.BlockJacobi`.
    groups = sorted(partition.groups, key=lambda g: int(g[0, 0]))
    T = BlockDiagonalOperator([torch.randn(g.shape[0], g.shape[1], g.shape[1], generator=generator, dtype=F64)
                               for g in groups])
    torch.testing.assert_close(times_block_diagonal(J, T).to_dense(), dense @ T.to_dense(), rtol=1e-12, atol=1e-12)
    assert times_block_diagonal(J, T).pattern is J.pattern


@pytest.mark.parametrize("damping", [0.0, 1e-10])
def test_block_jacobi_scaling_whitens_the_blocks(damping, generator):
    dense, J, partition = block_problem(generator, eliminated=((6, 3),))
    T = block_jacobi_scaling(J, partition, damping=damping)
    v = torch.randn(J.shape[1], generator=generator, dtype=F64)
    torch.testing.assert_close(T.inverse_matvec(T @ v), v)
    torch.testing.assert_close(T.rmatvec(v), T.to_dense().T @ v)
    JT = times_block_diagonal(J, T)
    torch.testing.assert_close(JT.to_dense(), dense @ T.to_dense())
    for group, blocks in zip(partition.groups, normal_diagonal_blocks(JT, partition)):
        for number, block in enumerate(blocks):
            rank = int(torch.linalg.matrix_rank(dense[:, group[number]]))
            if rank == group.shape[1]:  # regular: the identity, up to δ·cond (δ = damping)
                torch.testing.assert_close(block, torch.eye(rank, dtype=F64), rtol=0, atol=1e-10 + 1e4 * damping)
    # The scaled Jacobian as `Linearization.scaled` builds it agrees with J T.
    torch.testing.assert_close(ScaledOperator(J, T, left=False).to_dense(), JT.to_dense())


def test_slots_are_cached_on_the_pattern(generator):
    _, J, partition = block_problem(generator)
    first = block_slots(J.pattern, partition)
    assert block_slots(J.with_values(3 * J.values).pattern, partition) is first
    # Another partition object with equal tensors is another key (identity, not equality).
    copy = BlockPartition(partition.n, tuple(g.clone() for g in partition.groups), partition.eliminated)
    assert block_slots(J.pattern, copy) is not first


def test_float32_blocks(generator):
    dense, J, partition = block_problem(generator, dtype=torch.float32)
    for got, expected in zip(normal_diagonal_blocks(J, partition), dense_blocks(dense.double(), partition.groups)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    T = block_jacobi_scaling(J, partition)
    assert times_block_diagonal(J, T).values.dtype == torch.float32


def test_block_diagonal_operator_with_columns(generator):
    _, _, partition = block_problem(generator)
    blocks = [
        torch.randn(g.shape[0], g.shape[1], g.shape[1], generator=generator, dtype=F64) + 3 * torch.eye(g.shape[1])
        for g in partition.groups
    ]
    T = BlockDiagonalOperator(blocks, [torch.linalg.inv(b) for b in blocks], columns=partition.groups)
    dense = T.to_dense()
    v = torch.randn(partition.n, generator=generator, dtype=F64)
    torch.testing.assert_close(T @ v, dense @ v)
    torch.testing.assert_close(T.rmatvec(v), dense.T @ v)
    torch.testing.assert_close(T.inverse_matvec(v), torch.linalg.solve(dense, v))
    for group, group_blocks in zip(partition.groups, blocks):
        torch.testing.assert_close(dense[group[0]][:, group[0]], group_blocks[0])


def test_errors(generator):
    _, J, partition = block_problem(generator)
    eye = torch.eye(2, dtype=F64).expand(1, 2, 2)
    with pytest.raises(ValueError, match=r"columns must hold one index tensor per group of blocks \(1\), got 2"):
        BlockDiagonalOperator([eye], columns=[torch.tensor([[0, 1]]), torch.tensor([[2]])])
    rule = r"columns must be int64 tensors of the blocks' \(count, size\) shapes \(1, 2\), "
    with pytest.raises(ValueError, match=rule + r"got torch.int32 of shape \(1, 2\)"):
        BlockDiagonalOperator([eye], columns=[torch.tensor([[0, 1]], dtype=torch.int32)])
    with pytest.raises(ValueError, match=r"columns must lie in \[0, 2\), got range \[1, 2\]"):
        BlockDiagonalOperator([eye], columns=[torch.tensor([[1, 2]])])
    with pytest.raises(ValueError, match=r"columns must list each of the 2 variables exactly once, "
                                         r"got variable 0 listed 0 times"):
        BlockDiagonalOperator([eye], columns=[torch.tensor([[1, 1]])])
    with pytest.raises(ValueError, match=rf"columns must list each of the {J.shape[1]} columns of J exactly once"):
        normal_diagonal_blocks(J, partition.groups[:1])
    with pytest.raises(TypeError, match=r"columns must be a BlockPartition or a non-empty sequence of \(count, size\) "
                                        r"int64 tensors"):
        normal_diagonal_blocks(J, [torch.zeros(2, 2)])
    with pytest.raises(TypeError, match=r"times_block_diagonal needs a SparseOperator and a BlockDiagonalOperator, "
                                        r"got SparseOperator and Tensor"):
        times_block_diagonal(J, torch.eye(J.shape[1]))
    other = SparseOperator(torch.tensor([0]), torch.tensor([0]), torch.tensor([1.0], dtype=F64), (1, 2))
    with pytest.raises(ValueError, match=r"T must have shape \(2, 2\), got \(3, 3\)"):
        times_block_diagonal(other, BlockDiagonalOperator([torch.eye(3, dtype=F64).expand(1, 3, 3)]))
    with pytest.raises(ValueError, match=r"damping must be a number in \[0, 1\), got 1.5"):
        block_jacobi_scaling(J, partition, damping=1.5)


def test_blocks_and_products_on_every_device(device, generator):
    dense, J, partition = block_problem(generator, full_slots=False)
    on_device = SparseOperator(J.rows.to(device), J.cols.to(device), J.values.to(device), J.shape)
    groups = [g.to(device) for g in partition.groups]
    for got, expected in zip(normal_diagonal_blocks(on_device, groups), dense_blocks(dense, partition.groups)):
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-12)
    T = block_jacobi_scaling(on_device, groups)
    torch.testing.assert_close(times_block_diagonal(on_device, T).to_dense().cpu(), dense @ T.to_dense().cpu())


def test_a_negative_column_index_is_refused_not_counted_as_column_zero():
    """Found by a bug hunt: counted after clamping, −1 stood in for a missing column 0, the check
    passed, and the block of JᵀJ came back as [[0, 0], [0, 4.35]] from uninitialized slots."""
    J = SparseOperator(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3]), torch.ones(4, dtype=F64), (2, 4))
    with pytest.raises(ValueError, match=r"columns must list each of the 4 columns of J exactly once, got indices "
                                         r"from -1 to 3, outside \[0, 4\)"):
        normal_diagonal_blocks(J, [torch.tensor([[-1, 1], [2, 3]])])


def test_an_empty_group_of_blocks_is_an_empty_stack():
    """Found by a bug hunt: a (0, size) group ("points seen twice", none) crashed in torch.stack."""
    J = SparseOperator(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), torch.ones(3, dtype=F64), (2, 2))
    blocks = normal_diagonal_blocks(J, [torch.tensor([[0, 1]]), torch.empty(0, 3, dtype=torch.int64)])
    assert blocks[1].shape == (0, 3, 3)
    torch.testing.assert_close(blocks[0][0], J.to_dense().T @ J.to_dense())
