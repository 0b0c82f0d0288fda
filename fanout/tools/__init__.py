"""The operator tools (``fanout capacity``, ``soak``, ``bench``, ``slow-clients``,
``fetch``, ``tiny-model``): nothing serves through them, and their dependencies are the
``fanout[tools]`` extra. The container image leaves them out."""
