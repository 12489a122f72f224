"""Install step: generate the protobuf stubs from proto/ before packaging.

`pip install .` and `pip install -e .` both run this file, so the generated
`extproc/_proto` package always matches proto/ and is never hand-edited.
"""

import sys
from pathlib import Path

from setuptools import find_packages, setup

sys.path.insert(0, str(Path(__file__).parent))
from extproc._build_proto import build  # noqa: E402

build()
setup(packages=find_packages(include=["extproc", "extproc.*"]))
