"""Where the network config and the subnet leases live.

``registry`` is the store's narrow API (etcd today, the Kubernetes API later): a handful of
primitives that know the key layout and the JSON and nothing of policy. ``manager`` holds the
policy on top (flannel's LocalManager): acquire, renew, and a watch that never loses its place.
"""
