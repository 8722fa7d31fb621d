"""Activation checkpointing of the supernet's soft forward, one region per Choice.

Under soft masks every block of every Choice runs and keeps its activations for the backward
pass, about 1 MB per example on the CPU-sized Rankitect space. Checkpointing the whole forward
does not lower the peak (the backward recomputes and holds all of it at once); checkpointing
each Choice does: only the Choices' outputs are kept, and each Choice's internals are
recomputed, one Choice at a time, when the backward reaches it.

`Supernet` shares two caches between its Choices within a forward: the flat view of every
input and the pairwise projections ``FC_ij``. A checkpointed region must not fill them (its
recomputation would find them filled and save fewer tensors than the original forward), so
each Choice's region is entered with the entries it reads already computed outside it, and
reads them from its own snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch.utils.checkpoint import checkpoint

from rankitect.space import Supernet
from rankitect.space.blocks import PAIRWISE_BLOCKS


def _checkpointed(choice: Any):
    soft = type(choice).soft.__get__(choice)
    pairwise = any(b in choice.blocks for b in PAIRWISE_BLOCKS)
    cands = choice.candidates

    def run(w, srcs, flat, pair):
        # Snapshots of what the Choice reads, computed outside the region. The region's
        # arguments live as long as its graph: the growing `srcs` dict and the shared caches
        # would later hold tensors computed from this region's output, a reference cycle
        # through the autograd graph that Python's garbage collector cannot free.
        inputs = {k: srcs[k] for k in cands}
        flats = {k: flat(k) for k in cands}
        pairs = {(i, j): pair(i, j) for i in cands for j in cands} if pairwise else {}
        return checkpoint(
            soft, w, inputs, flats.__getitem__, lambda i, j: pairs[i, j], use_reentrant=False
        )

    return run


@contextmanager
def checkpoint_choices(supernet: Supernet) -> Iterator[Supernet]:
    """Within the block, ``supernet(..., soft=...)`` checkpoints every Choice separately.

    Values and gradients are those of the plain forward; the hard-mask forward is unaffected.
    Another space's supernet (e.g. `DHENSupernet`) checkpoints its own regions
    (``checkpoint_layers``).
    """
    if not isinstance(supernet, Supernet):
        if not hasattr(supernet, "checkpoint_layers"):
            raise ValueError(
                f"activation_checkpointing: {type(supernet).__name__} has no checkpointed regions"
            )
        with supernet.checkpoint_layers():
            yield supernet
        return
    for choice in supernet.choices:
        choice.soft = _checkpointed(choice)
    try:
        yield supernet
    finally:
        for choice in supernet.choices:
            del choice.soft
