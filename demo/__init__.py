"""A local demo stack: registry, notary-server and containerd with trustd in front."""
