"""Front doors only: parse flags, environment and files into frozen options, then run."""
