"""track_ai_call (instrument/ai/ and usage.py): the tracker, usage by shape, hostile responses, the real SDKs."""
