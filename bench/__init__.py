"""The benchmark: python3-lxc called directly against the whole HTTP -> helper chain, in one run."""
