"""Makes the kernel match what a backend asks for, through netlink (pyroute2).

It knows nothing of etcd or leases. Everything we add carries our marks (our device names, the
route protocol ``RTPROT_FLANNEL``), and only marked entries are ever removed.
"""
