"""pyflannel: Flannel's overlay network for container hosts, rebuilt in Python.

Layers (see DESIGN.md): core (pure) <- store, kernel, backend <- daemon <- cli; lab drives it all.
"""

__version__ = "0.1.0"
