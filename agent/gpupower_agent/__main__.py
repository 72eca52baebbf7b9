"""``python -m gpupower_agent``."""

import sys

from gpupower_agent.main import main

sys.exit(main())
