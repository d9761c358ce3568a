"""The lab: synthetic tasks with gold rewards, tiny models, and seeded paper reproductions."""
