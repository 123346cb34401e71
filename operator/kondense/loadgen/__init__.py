"""Open-loop load generator: replays evaluation inputs against an Open Inference Protocol v2 endpoint."""
