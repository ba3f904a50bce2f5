"""The lens finder: architectures, training, the one inference path."""
