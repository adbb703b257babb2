"""Pure core: parsing, validation, codecs and allocation. No I/O, no etcd, no kernel."""
