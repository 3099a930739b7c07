"""Training and inspecting the bundled prior on renders of the procedural world (docs/prior.md)."""
