"""`python -m extproc` is the `llmux` command."""

import sys

from extproc.run.cli import main

sys.exit(main())
