"""C API of talon-rt: talon_rt.h / talon_rt.c embed the Python runtime; bridge.py is their Python side."""
