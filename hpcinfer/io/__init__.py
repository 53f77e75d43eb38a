"""Readers, writers and model files: everything that touches the file system."""
