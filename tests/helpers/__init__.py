"""Builders shared by every test tier (models, synthetic data, run directories, spawned ranks, paths).

Test modules import helpers from here, never from each other, so editing one test cannot break another.
"""
