"""Data: corpus reading, pre-training instances, masking, task readers."""
