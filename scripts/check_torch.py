"""Can this Python run the job with its own torch? Prints one line: what it has (exit 0) or what is wrong (1).

Used by quickstart.sh and install.sh before they take a Python other than the pinned ./.venv (``PYTHON=`` or
the active environment). Needs nothing but the standard library and the torch under test.
"""
import sys


def main() -> int:
    if sys.version_info < (3, 10):
        print(f"Python {sys.version.split()[0]} is too old (3.10 or newer)")
        return 1
    try:
        import torch
        square = torch.ones(2, 2)
        if float((square @ square).sum()) != 8.0:
            raise RuntimeError("a 2x2 matmul gives a wrong result")
    except Exception as exc:  # ImportError, OSError from a broken install, torch_npu's autoload without CANN
        lines = str(exc).strip().splitlines()
        print(f"its torch does not work ({exc.__class__.__name__}: {lines[0] if lines else ''})")
        return 1
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append(f"{torch.cuda.device_count()} cuda")
    try:
        import torch_npu  # noqa: F401  (optional: Ascend)
        if torch.npu.is_available():
            devices.append(f"{torch.npu.device_count()} npu")
    except ImportError:
        pass
    except Exception as exc:
        print(f"its torch_npu does not work ({exc.__class__.__name__}: {str(exc).strip().splitlines()[0]}); "
              f"source CANN's set_env.sh, or set TORCH_DEVICE_BACKEND_AUTOLOAD=0")
        return 1
    print(f"Python {sys.version.split()[0]}, torch {torch.__version__} ({', '.join(devices)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
