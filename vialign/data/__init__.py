"""Dataset checks and descriptions: validation, soft/hard format classes, statistics."""
