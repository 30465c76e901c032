"""The node's configuration: one TOML file, validated into frozen objects; every error names the
file and the key.

``schema`` declares keys and reads tables, ``model`` holds the objects (each key declared once),
``load`` reads the file, ``paths`` says which file. This package imports nothing itself: the
programs' fast paths import ``paths`` alone.
"""
