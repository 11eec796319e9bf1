"""Everything a job writes: palette masks, prompts_used.jsonl, preview.mp4, manifest.json."""
