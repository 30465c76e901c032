"""cosign (Sigstore) signatures: classic ``.sig`` simple-signing layers and Sigstore bundles,
verified against configured public keys. The verifying core (``verify.verify_cosign``) is pure;
``loader`` reads key files."""
