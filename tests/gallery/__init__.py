"""A gallery of small models written the way third-party code writes them (timm, paper repos).

``models.GALLERY`` lists them with what a pruner should be able to do with each; the checks
live in ``tests/test_gallery.py`` and the results table in ``docs/gallery.md``.
"""
