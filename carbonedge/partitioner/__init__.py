"""partitioner."""
