"""pyflannel's benchmark suite (issue 7): data path and control plane, in lab namespaces.

Run with ``make bench`` (or ``sudo .venv/bin/python bench/run.py``); see bench/README.md.
"""
