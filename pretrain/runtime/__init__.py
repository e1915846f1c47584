"""The training runtime: distributed set-up, engines (plain and DeepSpeed), optimizer and
schedule, checkpoints, logging. Models know nothing of it; it wraps them from outside."""
