"""VideoMAE pre-training: the model (single-device, no knowledge of ranks or engines) and the
training runtime that fine-tuning reuses."""
