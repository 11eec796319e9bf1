"""Model registry, weight cache and adapters. torch/sam2 load only inside the adapter functions."""
