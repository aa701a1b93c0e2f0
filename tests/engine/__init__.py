"""The engine (_engine.py and its _dispatch, _jobs, _proxy, _with_blocks): its hooks, its guards, hostile callers."""
