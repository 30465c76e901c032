"""The programs: ``trustd`` (the daemon, check-config), ``trustctl`` (queries and repairs) and
``trustd-image-verifier`` (the file containerd 2.x runs for every pull)."""
