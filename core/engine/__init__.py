"""Mode engines. Each is a generator of events (frames, prompts, chunks, warnings); callers present them."""
