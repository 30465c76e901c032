"""The daemon's local socket: the wire format, the client that containerd's image verifier and
``trustctl`` use, and the daemon's server side."""
