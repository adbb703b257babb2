"""A multi-host flannel cluster on one machine, in network namespaces: the demo, the end-to-end
tests and the benchmarks all drive it. Everything it creates it also removes."""
