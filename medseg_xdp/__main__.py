"""`python -m medseg_xdp`: the medseg-xdp command."""

import sys

from medseg_xdp.cli import main

sys.exit(main())
