"""pyflannel: Flannel's overlay network for container hosts, rebuilt in Python.

Layers: core (pure) <- store, kernel, backend <- daemon <- cli; lab drives it all
(checked by tests/unit/test_layers.py).
"""

__version__ = "0.1.0"
