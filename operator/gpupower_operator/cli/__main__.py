"""``python -m gpupower_operator.cli``: the ``gpupower`` command."""

from gpupower_operator.cli.main import main

main()
