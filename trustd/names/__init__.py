"""Image references and the patterns that match them: docker's normalisation, the GUN, and the
globs a policy rule or an exemption is written in."""
