"""The on-disk model registry format, shared by training (writes models) and the feed API (reads them).

Imports only the standard library and `features`: never training/ or serving/, nor a model library.
"""
