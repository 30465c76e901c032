"""An OCI distribution client: resolving tags, reading manifests, blobs and referrers with the
pull's own credentials and the node's registry TLS settings. It fetches bytes; it verifies
nothing but digests and sizes."""
