"""What every network source of trust data shares: the caller's deadline, pull credentials, and
OCI content descriptors. No verification lives here."""
