"""Documentation generated from the code: the man pages and the README's directive tables."""
