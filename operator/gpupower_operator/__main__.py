"""``python -m gpupower_operator``: the operator."""

import sys

from gpupower_operator.main import main

sys.exit(main())
