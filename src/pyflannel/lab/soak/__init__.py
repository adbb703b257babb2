"""The chaos soak (``make soak``, issue 20): a lab of hosts on a three-member TLS etcd, live traffic
between every pair of containers, faults injected at random times from a seed, invariants checked
all the time, and a report (bench/results/soak-latest.{json,md,svg}).

- ``schedule``   the seeded fault schedule (pure: the same seed gives the same faults)
- ``invariants`` the invariant checks over observed state (pure)
- ``report``     the numbers, the Markdown table and the SVG chart (pure)
- ``soaklab``    the lab (lab/cluster.py hosts on lab/etcd_cluster.py) and what is read from it
- ``traffic``    pings at 10 ms between every pair of containers, one content-checked TCP stream
- ``faults``     the injectors (each fault and its undo, on the lab)
- ``run``        the lab, the run loop and the command line (``python -m pyflannel.lab.soak``)
"""
