"""Data stages: download -> split -> crop -> pack. Each is `python -m face_generation.data.<stage>`."""
