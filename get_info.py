"""Write the dataset list (``.info``) the offline runner reads, with upstream's arguments.

    python get_info.py bin ./prep_bin ./seresnext50_val.info 224 224
    python get_info.py jpg ./ImageNet/val_flat ./ImageNet.info

Each line is ``index path width height``; the index runs once over all files in sorted order.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from seresnext.cli import ToolError, run_main
from seresnext.info import write_bin_info, write_jpg_info

USAGE = ("usage: python get_info.py bin <bin_dir> <out.info> <width> <height>\n"
         "       python get_info.py jpg <jpg_dir> <out.info>")


def _positive_int(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ToolError(f"<{name}> must be a positive integer, got {text!r}\n{USAGE}") from None
    if value <= 0:
        raise ToolError(f"<{name}> must be a positive integer, got {text!r}\n{USAGE}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if not args or args[0] not in ("bin", "jpg"):
        raise ToolError(f"the first argument must be 'bin' or 'jpg'\n{USAGE}")
    if args[0] == "bin":
        if len(args) != 5:
            raise ToolError(f"bin mode takes 4 arguments after 'bin', got {len(args) - 1}\n{USAGE}")
        width, height = _positive_int(args[3], "width"), _positive_int(args[4], "height")
        count = write_bin_info(args[1], args[2], width, height)
    else:
        if len(args) != 3:
            raise ToolError(f"jpg mode takes 2 arguments after 'jpg', got {len(args) - 1}\n{USAGE}")
        count = write_jpg_info(args[1], args[2])
    print(f"get_info: wrote {count} entries to {args[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "get_info.py"))
