"""Owners with identical member sets: columns with the same rows, rows with the same columns.

Identical sets matter to every algorithm built on a sparsity pattern:
columns with the same row set are a block of bundle adjustment (a camera's
nine parameters) and a clique of twins in the coloring graph; rows with the
same column set impose the same coloring constraint. `identical_sets` finds
them in O(entries) vectorized work: each set is hashed to the sum of random
64-bit weights of its members, modulo 2⁶⁴ (wrapping integer arithmetic).
Two different sets A ≠ B collide when Σ_{A△B} ±w ≡ 0, and since some weight
there has coefficient ±1 (odd, so invertible mod 2⁶⁴), that happens with
probability 2⁻⁶⁴ over the weights. Owners are grouped by hash and size, and
each owner is then compared entry by entry with the first owner of its
group, so that a collision costs time, never correctness.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustls._sorting import stable_order, unique_with_inverse

__all__ = ["all_distinct", "identical_sets", "stable_order"]

# Fixed, so that the classes (and everything built on them) are reproducible.
_HASH_SEED = 0x5EED_C0DE


def identical_sets(owners: Tensor, members: Tensor, count: int, universe: int) -> tuple[Tensor, Tensor]:
    """Classes of owners with identical member sets (columns with identical rows, say).

    Args:
        owners: int64 owner of each entry, sorted (nondecreasing).
        members: int64 member of each entry, increasing within an owner.
        count: the number of owners; owners without entries are allowed.
        universe: the number of possible members.

    Returns:
        ``(classes, first)``: the class of each owner, numbered in the order
        of each class's first owner, and that first owner per class (so
        ``first.numel()`` classes). An owner with no entry forms a class of
        its own: empty sets share nothing, so grouping them would only
        invent structure.

    Each set is hashed to a sum of random 64-bit weights of its members
    (wrapping), classes are formed by hash and size, and every owner is then
    compared entry by entry with its class's first owner; the rare
    collision falls back to exact grouping of the owners involved.

    Examples:
        >>> import torch
        >>> identical_sets(torch.tensor([0, 0, 1, 1, 2]), torch.tensor([3, 5, 3, 5, 4]), 4, 6)
        (tensor([0, 0, 1, 2]), tensor([0, 2, 3]))
    """
    sizes, keys = _set_keys(owners, members, count, _weights(universe, members.device))
    return _classes(owners, members, count, sizes, keys)


def all_distinct(owners: Tensor, members: Tensor, count: int, universe: int) -> bool:
    """Whether no two owners have the same member set, when their hashes already tell (else ``False``).

    Distinct hashes imply distinct sets, so ``True`` is certain; ``False``
    means that `identical_sets` must look. Entries may come in any order but
    must not repeat. O(entries) plus one sort of ``count`` keys.
    """
    _, keys = _set_keys(owners, members, count, _weights(universe, members.device))
    return unique_with_inverse(keys)[0].numel() == count


def _weights(universe: int, device: torch.device) -> Tensor:
    """The random 64-bit weight of each possible member, from a fixed seed."""
    generator = torch.Generator().manual_seed(_HASH_SEED)
    return torch.randint(-(2**63), 2**63 - 1, (universe,), generator=generator, dtype=torch.int64).to(device)


def _set_keys(owners: Tensor, members: Tensor, count: int, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Each owner's number of members and the hash key of its set (module docstring)."""
    device = owners.device
    sizes = torch.bincount(owners, minlength=count)
    hashes = torch.zeros(count, dtype=torch.int64, device=device).index_add_(0, owners, weights.index_select(0, members))
    # Fold the size in (an odd multiplier keeps it a bijection per size), and
    # give each empty owner a key of its own; a nonempty owner that happens to
    # share it fails the exact check of `_classes` (the sizes differ).
    keys = hashes ^ (sizes * -7046029254386353131)
    return sizes, torch.where(sizes == 0, -torch.arange(1, count + 1, device=device), keys)


def _classes(owners: Tensor, members: Tensor, count: int, sizes: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    device = owners.device
    classes = unique_with_inverse(keys)[1]
    if count and int(classes.max()) + 1 == count:  # all keys distinct: so are the sets
        first = torch.arange(count, device=device)
        return first, first
    rep = _first_owner(classes, count).index_select(0, classes)  # each owner's class's first owner
    # Exact check: the same size, and the same member at every offset.
    same = sizes == sizes.index_select(0, rep)
    if members.numel():
        starts = torch.cumsum(sizes, 0) - sizes
        shift = torch.where(same, starts.index_select(0, rep) - starts, 0)
        reference = torch.arange(members.numel(), device=device) + shift.index_select(0, owners)
        mismatch = members != members.index_select(0, reference)
        if bool(mismatch.any()):
            wrong = torch.zeros(count, dtype=torch.int64, device=device).index_add_(0, owners, mismatch.to(torch.int64))
            same &= wrong == 0
    if not bool(same.all()):
        classes = _exact_classes(owners, members, count, classes, same)
    return _renumber(classes, count)


def _first_owner(classes: Tensor, count: int) -> Tensor:
    n_classes = int(classes.max()) + 1 if count else 0
    first = torch.full((n_classes,), count, dtype=torch.int64, device=classes.device)
    return first.scatter_reduce_(0, classes, torch.arange(count, device=classes.device), "amin")


def _renumber(classes: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Number the classes in the order of their first owner; return them and those owners."""
    first = _first_owner(classes, count)
    order = torch.argsort(first)
    rank = torch.empty_like(first)
    rank[order] = torch.arange(first.numel(), device=first.device)
    return rank[classes], first[order]


def _exact_classes(owners: Tensor, members: Tensor, count: int, classes: Tensor, same: Tensor) -> Tensor:
    """Regroup, by their exact member tuples, the owners of every class that failed the check."""
    suspect = torch.zeros(int(classes.max()) + 1, dtype=torch.bool, device=classes.device)
    suspect[classes[~same]] = True
    pointers = [0] + torch.cumsum(torch.bincount(owners, minlength=count), 0).tolist()
    member_list = members.tolist()
    classes = classes.clone()
    next_class = int(classes.max()) + 1
    seen: dict[tuple[int, ...], int] = {}
    for owner in torch.nonzero(suspect[classes]).flatten().tolist():
        key = (int(classes[owner]),) + tuple(member_list[pointers[owner] : pointers[owner + 1]])
        if key not in seen:
            seen[key] = next_class
            next_class += 1
        classes[owner] = seen[key]
    return torch.unique(classes, return_inverse=True)[1]  # drop the classes emptied by the split
