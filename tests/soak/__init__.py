"""Soak tests: the serving layer under steady traffic while replica processes are killed."""
