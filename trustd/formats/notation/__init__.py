"""Notation (Notary Project) signatures: a pure verifying core (envelopes, certificate chains,
trust policy, the verification workflow) and a loader for notation's configuration directory."""
