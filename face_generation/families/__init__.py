"""The model families: one file per family, each defining `FAMILY` (runtime/family.py's contract).

`face_generation.runtime.registry.family_class("vae")` imports `families/vae.py` when it is
first asked for; nothing imports every family. A family file holds the family class and its
loss; its networks live in face_generation/models/, its numbers in configs/model/<name>.yaml.
"""
