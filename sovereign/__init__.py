"""The ``sovereign`` command: the composition root that wires the packages' use cases to a CLI."""
