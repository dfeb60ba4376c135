"""Bundled camera-rig presets (JSON); a package so setuptools ships the files with the wheel."""
