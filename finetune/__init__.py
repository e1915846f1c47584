"""Fine-tuning: ViViT models initialised from a VideoMAE encoder (or published weights),
trained and evaluated on MedMNIST3D volumes or video shards."""
