"""What PruneTPE and PruneEarlyStop say about a classArgs key they do not know.

A typo is the usual cause (``target_sparsty``), so the message names the key and the closest
valid one instead of repeating the whole classArgs mapping (schema's ``Wrong key ... in {...}``,
which also carries the profile's absolute path).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


def unknown_key_message(owner: str, keys: Iterable[object], valid: Sequence[str]) -> str | None:
    """``None`` when every key is valid, else one line about the first unknown key.

    Args:
        owner: ``PruneTPE`` or ``PruneEarlyStop``, which starts the message.
        keys: The classArgs keys as given, in their order.
        valid: The keys the algorithm accepts.
    """
    unknown = [key for key in keys if key not in valid]
    if not unknown:
        return None
    key = unknown[0]
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"the keys are {', '.join(valid)}"
    return f"{owner} classArgs: unknown key {key!r}: {hint}"
