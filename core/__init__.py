"""cryolens core: the format-neutral engine (data model, images, geometry, CTF, projector).

core knows no file format but MRC and no program but itself: it never imports starfile or
cryosparc (enforced by tests/test_layout.py).
"""
