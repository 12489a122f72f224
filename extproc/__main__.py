"""`python -m extproc` is the `llmux` command."""

import sys

from extproc.cli import main

sys.exit(main())
