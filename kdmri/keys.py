"""The names and the digest that key the files every layer shares.

A leaf module (it imports nothing of kdmri): the data layer, the checkpoints and the
teacher cache take the split names and the digest from here, not from the config; the
CLI and the network loader take the trust flag's name.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: The splits of every prepared dataset, in order: ``<split>.h5`` in a data folder.
SPLITS = ("train", "val", "test")

#: The command-line flag by which the user allows a model file's ``family: python`` network
#: to load (:func:`kdmri.models.python_family.check_consent`).
TRUST_FLAG = "--trust-code"


def digest(obj: Any) -> str:
    """A short stable digest of plain data: the first 16 hex digits of the sha256 of its
    JSON with sorted keys and no spaces (a spec's, a config's, a cache's key)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
