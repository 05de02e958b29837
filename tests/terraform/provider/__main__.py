"""``python -m tests.terraform.provider NAME``: the stand-in of provider NAME, as Terraform starts it (plan.py)."""

from __future__ import annotations

import sys

from .server import serve

if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m tests.terraform.provider google|google-beta|archive", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(sys.argv[1]))
