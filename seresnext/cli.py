"""What every top-level script shares: known errors become one line on stderr and a non-zero exit."""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

__all__ = ["run_main", "ToolError"]


class ToolError(Exception):
    """A problem the user can fix; the message names the file, line or flag. Exit status 1."""


def run_main(main: Callable[[Sequence[str] | None], int], prog: str, argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; turn expected errors into ``prog: error: message`` and exit status 1.

    Expected errors are :class:`ToolError` and the ``ValueError`` / ``OSError`` families that the library
    raises with the path in the message (``FormatError``, ``CheckpointError``, ``AippConfigError``, ...).
    Ctrl-C exits 130 without a traceback.
    """
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ToolError, ValueError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
