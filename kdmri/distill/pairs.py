"""Layer pairs: which modules of the teacher and the student are paired.

A pair (a spec's ``pairs``, read by every term taking features at the pairs: attention,
FitNets, SP, CC, ...) is ``[teacher, student]``, either two 1-based convolution indices (a
built-in network resolves them through ``feature_paths(k)``: one module per cascade for
DC-CNN) or two module paths as ``model.named_modules()`` names them
(``"cascades.2.cnn.4"``); a ``family: python`` network is addressed by paths only.

FSP relates two layers of the same network, so its pairs (a spec's ``fsp_pairs``) give
each side two layers: ``[[teacher_F1, teacher_F2], [student_F1, student_F2]]``, each layer
as above. Indices expand per cascade and are matched cascade by cascade: for DC-CNN
teacher 5 x 5 / student 5 x 3, ``[[[1, 4], [1, 2]]]`` pairs, in every cascade, the first
and the last hidden convolution of each network (:func:`fsp_paths`).
"""

from __future__ import annotations

import json

from torch import nn

from kdmri.errors import KdmriError

ROLES = ("teacher", "student")


def layer_paths(model: nn.Module, layer: int | str, role: str) -> list[str]:
    """The module paths of ``model`` that ``layer`` (one side of a pair) names."""
    if isinstance(layer, str):
        modules = [name for name, _ in model.named_modules() if name]
        if layer not in modules:
            raise KdmriError(
                f"pairs: the {role} ({type(model).__name__}) has no module {layer!r}; "
                f"its modules: {modules}"
            )
        return [layer]
    if not hasattr(model, "feature_paths"):
        raise KdmriError(
            f"pairs: the {role} ({type(model).__name__}) has no numbered convolutions; give "
            "each pair as two module paths, e.g. [\"cascades.2.cnn.4\", \"body.3\"]"
        )
    return model.feature_paths(int(layer))


def pair_paths(model: nn.Module, pairs: list, role: str) -> list[str]:
    """Every module path of ``model`` that ``pairs`` names for ``role`` (teacher or student),
    in the order of the pairs."""
    side = ROLES.index(role)
    return [path for pair in pairs for path in layer_paths(model, pair[side], role)]


def plain_pairs(pairs) -> list[list[int | str]]:
    """``pairs`` as plain lists (ints or strings), also as a teacher cache stores them: an
    integer array (pairs of indices) or JSON text (pairs with paths)."""
    if isinstance(pairs, (str, bytes)):
        pairs = json.loads(pairs)
    return [[item if isinstance(item, str) else int(item) for item in pair] for pair in pairs]


def pairs_attr(pairs: list):
    """``pairs`` as a store attribute: as given where every entry is an index (the format
    caches have always had), JSON text where any is a path."""
    plain = plain_pairs(pairs)
    if any(isinstance(item, str) for pair in plain for item in pair):
        return json.dumps(plain)
    return plain


def fsp_paths(model: nn.Module, fsp_pairs: list, role: str) -> list[tuple[str, str]]:
    """The ``(F1, F2)`` module paths of ``model`` that ``fsp_pairs`` names for ``role``, in
    the order of the pairs (cascade by cascade within a pair of indices)."""
    side = ROLES.index(role)
    result = []
    for pair in fsp_pairs:
        first, second = (layer_paths(model, layer, role) for layer in pair[side])
        if len(first) != len(second):
            raise KdmriError(f"fsp_pairs: the {role}'s layers {pair[side]} name {len(first)} "
                             f"and {len(second)} modules; each F1 needs its F2")
        result += list(zip(first, second, strict=True))
    return result
