"""Human annotation of reward-model data: a small web UI over SQLite, and export to the RM format."""
