"""The seed README's spelling of ``pthtar2onnx.py`` (``python pthtar2onx.py``): same tool, same flags."""
from __future__ import annotations

import sys

from pthtar2onnx import main
from seresnext.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main(lambda argv: main(argv, prog="pthtar2onx.py"), "pthtar2onx.py"))
