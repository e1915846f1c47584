"""`python -m data.prep {videos,medmnist,synthetic}`: turn a data set into WebDataset shards."""
