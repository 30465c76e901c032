"""The programs: ``trustd`` (``trustd_command``: the daemon, check-config), ``trustctl``
(``trustctl``: its fast path, asking the daemon; ``trustctl_commands``: everything judged in
process) and ``trustd-image-verifier`` (``image_verifier``: the file containerd 2.x runs per
pull)."""
