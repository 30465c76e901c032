"""Signature formats: Notary v1 (``notary``), Notation (``notation``) and cosign (``cosign``),
each answering the same question behind one interface (``trustd.formats.base``)."""
