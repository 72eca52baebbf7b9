"""The ``gpupower`` command line: plan budget files, import and measure profiles."""
