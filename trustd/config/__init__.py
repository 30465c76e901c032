"""The node's configuration: one TOML file, validated into frozen objects; every error names the
file and the key."""
