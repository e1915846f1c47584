"""Everything before a tensor: prep (sharding), decode, sampling, transforms, masks, streams."""
